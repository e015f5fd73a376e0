# The two inputs of the evaluation tests, as given on the command line: `lib`
# as nixpkgs' lib itself or a path to a nixpkgs or nixpkgs.lib checkout, and
# `quadlet-nix` as its flake or a path to its checkout.
{ lib, quadlet-nix }:
{
  lib =
    if builtins.isAttrs lib then
      lib
    else if builtins.pathExists (lib + "/lib/default.nix") then
      import (lib + "/lib")
    else
      import lib;
  quadletModule =
    if builtins.isAttrs quadlet-nix && quadlet-nix ? nixosModules then
      quadlet-nix.nixosModules.quadlet
    else
      quadlet-nix + "/nixos-module.nix";
}
