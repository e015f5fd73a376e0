{
  description = "llmhop: one OpenAI-compatible endpoint in front of many LLM inference servers, routed by model";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    quadlet-nix.url = "github:SEIAROTg/quadlet-nix";
  };

  # Everything lives in nix/ (package, NixOS module, tests).
  outputs = inputs: import ./nix inputs;
}
