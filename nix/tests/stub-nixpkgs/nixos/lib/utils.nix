# The part of nixpkgs' nixos/lib/utils.nix that quadlet-nix uses (it imports
# it through `pkgs.path`), with the same rendering rules, for evaluating the
# module without nixpkgs. Test scaffolding only.
{ lib, ... }:
let
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;
in
{
  systemdUtils = {
    lib = {
      inherit toOption;
      attrsToSection =
        section:
        lib.concatStrings (
          lib.concatLists (
            lib.mapAttrsToList (
              name: value: map (x: "${name}=${toOption x}\n") (if lib.isList value then value else [ value ])
            ) section
          )
        );
    };
    # Lists concatenate, anything else must be defined once.
    unitOptions.unitOption = lib.mkOptionType {
      name = "systemd option";
      merge =
        loc: defs:
        let
          defs' = lib.filterOverrides defs;
        in
        if lib.any (def: lib.isList def.value) defs' then
          lib.concatMap (def: lib.toList def.value) defs'
        else
          lib.mergeEqualOption loc defs';
    };
  };
}
