# The documentation of every services.llmhop option, as JSON, for
# nix/options_md.py (which writes nix/options.md):
#
#   nix-instantiate --eval --strict --json nix/tests/options.nix \
#     --arg lib /path/to/nixpkgs.lib --arg quadlet-nix /path/to/quadlet-nix
{ lib, quadlet-nix }@inputs:
let
  # These shadow the arguments: from here on, lib is nixpkgs' lib itself.
  inherit (import ./inputs.nix inputs) lib quadletModule;
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  evaluated = lib.evalModules {
    modules = [
      ./stub-options.nix
      ../quadlet.nix
      quadletModule
      { _module.args.pkgs = pkgs; }
    ];
  };
  root = toString ../..;
  relative = path: lib.removePrefix "${root}/" (toString path);
in
map (option: {
  inherit (option) name description type;
  default = option.default or null;
  hasDefault = option ? default;
  example = option.example or null;
  readOnly = option.readOnly or false;
  declarations = map relative option.declarations;
}) (
  lib.filter (option: option.visible && !option.internal) (
    lib.optionAttrSetToDocList evaluated.options.services.llmhop
  )
)
