# Loosely typed declarations of the NixOS options that llmhop's module and
# quadlet-nix's module set, so that both evaluate with lib.evalModules outside
# NixOS. Lists concatenate and attribute sets merge as in NixOS; values are not
# checked further. Test scaffolding only.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  loose = types.attrsOf types.anything;
  list = mkOption {
    type = types.listOf types.anything;
    default = [ ];
  };
  attrs = mkOption {
    type = loose;
    default = { };
  };
  unitOption = (import ./stub-nixpkgs/nixos/lib/utils.nix { inherit lib; }).systemdUtils.unitOptions.unitOption;
  unit = types.submodule {
    freeformType = loose;
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      wantedBy = list;
      wants = list;
      after = list;
      requires = list;
      restartTriggers = list;
      reloadTriggers = list;
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      environment = attrs;
    };
  };
in
{
  options = {
    assertions = list;
    warnings = list;
    systemd = {
      services = mkOption {
        type = types.attrsOf unit;
        default = { };
      };
      timers = mkOption {
        type = types.attrsOf unit;
        default = { };
      };
      packages = list;
      tmpfiles.rules = list;
    };
    users = {
      users = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule {
            freeformType = loose;
            options = {
              subUidRanges = list;
              subGidRanges = list;
            };
          }
        );
      };
      groups = attrs;
    };
    environment = {
      etc = mkOption {
        type = types.attrsOf (types.submodule { freeformType = loose; });
        default = { };
      };
      systemPackages = list;
    };
    networking.firewall.allowedTCPPorts = list;
    virtualisation.podman = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.anything;
        default = null;
      };
    };
  };
}
