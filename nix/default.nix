# The flake's outputs (flake.nix stays thin and calls this).
{
  self,
  nixpkgs,
  quadlet-nix,
  ...
}:
let
  inherit (nixpkgs) lib;
  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];
  forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
  isLinux = pkgs: pkgs.stdenv.hostPlatform.isLinux;
in
{
  overlays.default = final: _prev: { llmhop = final.callPackage ./package.nix { }; };

  packages = forAllSystems (pkgs: {
    default = self.packages.${pkgs.stdenv.hostPlatform.system}.llmhop;
    llmhop = pkgs.callPackage ./package.nix { };
  });

  # nix run .# -- --config examples/config.json   (from a checkout; or the flake's URL
  # where you host it, e.g. github:you/llmhop, in place of .#)
  apps = forAllSystems (pkgs: {
    default = {
      type = "app";
      program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.llmhop;
    };
  });

  nixosModules = {
    # services.llmhop with its native workers (llama.cpp, SGLang, vLLM):
    # nothing but nixpkgs.
    default = ./module.nix;
    # The same, plus the Podman variants (sglang-quadlet, vllm-quadlet) and
    # quadlet-nix's module they are rendered by. Import this one instead of
    # `default`, and not quadlet-nix's as well (or make both the same with
    # `inputs.llmhop.inputs.quadlet-nix.follows`).
    quadlet = {
      imports = [
        ./quadlet.nix
        quadlet-nix.nixosModules.quadlet
      ];
    };
    # The Podman variants for those who import quadlet-nix themselves.
    containers = ./quadlet.nix;
  };

  checks = forAllSystems (
    pkgs:
    {
      package = self.packages.${pkgs.stdenv.hostPlatform.system}.llmhop;
      module-eval = pkgs.writeText "llmhop-module-eval.json" (
        builtins.toJSON (import ./tests/eval.nix { inherit lib quadlet-nix; })
      );
    }
    // lib.optionalAttrs (isLinux pkgs) {
      vm = import ./tests/vm.nix {
        inherit pkgs;
        module = self.nixosModules.default;
      };
    }
  );

  formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
}
