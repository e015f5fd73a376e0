# services.llmhop with the Podman variants of its workers as well
# (sglang-quadlet, vllm-quadlet), rendered by quadlet-nix's NixOS module, which
# must be imported too: the flake's nixosModules.quadlet does both.
{
  imports = [
    ./module.nix
    ./containers.nix
  ];
}
