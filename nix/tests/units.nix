# Unit files of an evaluated configuration's systemd.services, written by the
# rules NixOS renders them with (nixos/lib/systemd-lib.nix): [Unit] from the
# dependency lists, description and start limits plus unitConfig; [Service]
# with one quoted Environment= line per variable (PATH from `path`) and then
# serviceConfig, a list giving one line per element and booleans written as
# true/false; [Install] WantedBy=. The result, { "<name>.service" = text; },
# is what nix/tests/verify-units hands to systemd-analyze. Test scaffolding.
{ lib }:
config:
let
  value = x: if x == true then "true" else if x == false then "false" else toString x;
  section = attrs: lib.concatStrings (lib.mapAttrsToList (name: v: lib.concatMapStrings (x: "${name}=${value x}\n") (lib.toList v)) attrs);
  # Options without a default (the start limits) are left out unless set.
  defined =
    unit: name:
    let
      tried = builtins.tryEval (unit.${name});
    in
    lib.optionalAttrs tried.success { ${name} = tried.value; };
  joined = name: items: lib.optionalAttrs (items != [ ]) { ${name} = lib.concatStringsSep " " items; };

  unitSection =
    unit:
    joined "Requires" unit.requires
    // joined "Wants" unit.wants
    // joined "After" unit.after
    // joined "Before" unit.before
    // joined "BindsTo" unit.bindsTo
    // joined "PartOf" unit.partOf
    // joined "Conflicts" unit.conflicts
    // lib.optionalAttrs (unit.description != "") { Description = unit.description; }
    // lib.mapAttrs' (name: v: lib.nameValuePair (if name == "startLimitBurst" then "StartLimitBurst" else "StartLimitIntervalSec") v) (
      defined unit "startLimitBurst" // defined unit "startLimitIntervalSec"
    )
    // unit.unitConfig;

  environment =
    unit:
    unit.environment
    // lib.optionalAttrs (unit.path != [ ]) {
      PATH = "${lib.makeBinPath unit.path}:${lib.makeSearchPathOutput "bin" "sbin" unit.path}";
    };

  render = unit: ''
    [Unit]
    ${section (unitSection unit)}
    [Service]
    ${lib.concatStrings (
      lib.mapAttrsToList (name: v: lib.optionalString (v != null) "Environment=${builtins.toJSON "${name}=${v}"}\n") (
        environment unit
      )
    )}${section unit.serviceConfig}${lib.optionalString (unit.wantedBy != [ ]) ''

      [Install]
      WantedBy=${lib.concatStringsSep " " unit.wantedBy}
    ''}'';
in
lib.mapAttrs' (name: unit: lib.nameValuePair "${name}.service" (render unit)) (
  lib.filterAttrs (_: unit: unit.enable) config.systemd.services
)
