# Declarations of the NixOS options that llmhop's module and quadlet-nix's
# module set, so that both evaluate with lib.evalModules outside NixOS.
#
# Typed as NixOS declares them (nixos/lib/systemd-unit-options.nix,
# nixos/modules/config/users-groups.nix, …), written here from those types, not
# copied: a unit option or user attribute NixOS does not know is an error, a
# list of unit names is checked against NixOS's unit-name pattern, `Type=` and
# `Restart=` against the values NixOS accepts, and so on. Why not NixOS's own
# files: docs/nixos.md, "Checks". Test scaffolding only.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  list =
    type:
    mkOption {
      type = types.listOf type;
      default = [ ];
    };
  bool =
    default:
    mkOption {
      type = types.bool;
      inherit default;
    };
  unitOption = (import ./stub-nixpkgs/nixos/lib/utils.nix { inherit lib; }).systemdUtils.unitOptions.unitOption;
  # NixOS's unitNameType.
  unitName = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  units = list unitName;
  section = mkOption {
    type = types.attrsOf unitOption;
    default = { };
  };
  # NixOS checks these two [Service] values when the unit is defined.
  serviceValues = {
    Type = [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ];
    Restart = [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "on-watchdog"
      "always"
    ];
  };
  checkService = config: lib.all (key: !(config ? ${key}) || lib.elem config.${key} serviceValues.${key}) (lib.attrNames serviceValues);

  commonUnit = {
    enable = bool true;
    description = mkOption {
      type = types.singleLineStr;
      default = "";
    };
    documentation = list types.str;
    wantedBy = units;
    requiredBy = units;
    upheldBy = units;
    aliases = units;
    requires = units;
    wants = units;
    upholds = units;
    after = units;
    before = units;
    bindsTo = units;
    partOf = units;
    conflicts = units;
    requisite = units;
    onFailure = units;
    onSuccess = units;
    unitConfig = section;
    startLimitBurst = mkOption { type = types.int; };
    startLimitIntervalSec = mkOption { type = types.int; };
    restartTriggers = list types.unspecified;
    reloadTriggers = list unitOption;
    overrideStrategy = mkOption {
      type = types.enum [
        "asDropinIfExists"
        "asDropin"
      ];
      default = "asDropinIfExists";
    };
  };
  service = types.submodule {
    options = commonUnit // {
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      path = list (
        types.oneOf [
          types.package
          types.str
        ]
      );
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      restartIfChanged = bool true;
      reloadIfChanged = bool false;
      stopIfChanged = bool true;
    };
  };
  timer = types.submodule {
    options = commonUnit // {
      timerConfig = section;
    };
  };
  # subUidRanges and subGidRanges: lists of { startUid or startGid, count }.
  idRanges =
    start:
    list (
      types.submodule {
        options = {
          ${start} = mkOption { type = types.int; };
          count = mkOption {
            type = types.int;
            default = 1;
          };
        };
      }
    );
  user = types.submodule (
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        isSystemUser = bool false;
        isNormalUser = bool false;
        group = mkOption {
          type = types.str;
          default = "";
        };
        extraGroups = list types.str;
        description = mkOption {
          type = types.str;
          default = "";
        };
        home = mkOption {
          type = types.str;
          default = "/var/empty";
        };
        createHome = bool false;
        useDefaultShell = bool false;
        linger = mkOption {
          type = types.nullOr types.bool;
          default = null;
        };
        subUidRanges = idRanges "startUid";
        subGidRanges = idRanges "startGid";
      };
    }
  );
  group = types.submodule {
    options = {
      gid = mkOption {
        type = types.nullOr types.int;
        default = null;
      };
      members = list types.str;
    };
  };
  etc = types.submodule (
    { name, ... }:
    {
      options = {
        enable = bool true;
        target = mkOption {
          type = types.str;
          default = name;
        };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
        source = mkOption { type = types.path; };
        mode = mkOption {
          type = types.str;
          default = "symlink";
        };
        user = mkOption {
          type = types.str;
          default = "+0";
        };
        group = mkOption {
          type = types.str;
          default = "+0";
        };
      };
    }
  );
in
{
  options = {
    assertions = list (
      types.submodule {
        options = {
          assertion = mkOption { type = types.bool; };
          message = mkOption { type = types.str; };
        };
      }
    );
    warnings = list types.str;
    systemd = {
      services = mkOption {
        type = types.attrsOf service;
        default = { };
      };
      timers = mkOption {
        type = types.attrsOf timer;
        default = { };
      };
      packages = list types.package;
      tmpfiles.rules = list types.str;
      package = mkOption {
        type = types.package;
        default = pkgs.systemd;
      };
    };
    users = {
      users = mkOption {
        type = types.attrsOf user;
        default = { };
      };
      groups = mkOption {
        type = types.attrsOf group;
        default = { };
      };
    };
    environment = {
      etc = mkOption {
        type = types.attrsOf etc;
        default = { };
      };
      systemPackages = list types.package;
    };
    networking.firewall.allowedTCPPorts = list types.port;
    virtualisation.podman = {
      enable = bool false;
      package = mkOption {
        type = types.nullOr types.package;
        default = null;
      };
    };
  };
}
