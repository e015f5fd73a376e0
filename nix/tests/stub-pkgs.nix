# Stand-ins for the few parts of nixpkgs the modules touch, for evaluating them
# with nixpkgs' `lib` alone. Builders return attribute sets that say what they
# were given, so the evaluation test can look inside scripts and files that a
# real build would write to the store. Test scaffolding only.
{ lib }:
let
  package = name: {
    type = "derivation";
    inherit name;
    pname = name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };
  built =
    name: attrs:
    package name
    // attrs
    // {
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
    };

  # The type of pkgs.formats.json's values (named, as nixpkgs does, so that
  # describing it does not recurse).
  jsonValue =
    lib.types.nullOr (
      lib.types.oneOf [
        lib.types.bool
        lib.types.int
        lib.types.float
        lib.types.str
        lib.types.path
        (lib.types.attrsOf jsonValue)
        (lib.types.listOf jsonValue)
      ]
    )
    // {
      description = "JSON value";
    };
in
lib.fix (self: {
  inherit lib;
  callPackage = lib.callPackageWith self;
  path = ./stub-nixpkgs;
  formats.json = _: {
    type = jsonValue;
    generate = name: value: built name { json = builtins.toJSON value; };
  };
  writeText = name: text: built name { inherit text; };
  writeShellScript = name: text: built name { inherit text; };
  writeShellApplication =
    { name, text, ... }@args:
    built name {
      inherit text;
      runtimeInputs = args.runtimeInputs or [ ];
    };
  linkFarm = name: entries: built name { inherit entries; };
  runCommand = name: env: script: built name { inherit env script; };
  coreutils = package "coreutils";
  curl = package "curl";
  systemd = package "systemd" // {
    version = "257.9";
  };
  podman = package "podman";
  llama-cpp = package "llama-cpp";
  vllm = package "vllm";
  bash = package "bash";
  gcc = package "gcc";
  ninja = package "ninja";
  llmhop = package "llmhop";

  # For evaluating the flake's outputs (nix/default.nix, nix/package.nix).
  stdenv.hostPlatform = {
    system = "x86_64-linux";
    isLinux = true;
  };
  python3 = package "python3" // {
    interpreter = "/nix/store/00000000000000000000000000000000-python3/bin/python3";
  };
  python3Packages =
    let
      python = name: package "python3-${name}";
    in
    {
      buildPythonApplication = args: built "${args.pname}-${args.version}" args;
      setuptools = python "setuptools";
      twisted = python "twisted" // {
        optional-dependencies.tls = [
          (python "pyopenssl")
          (python "service-identity")
          (python "idna")
        ];
      };
      treq = python "treq";
      attrs = python "attrs";
      prometheus-client = python "prometheus-client";
      pytestCheckHook = python "pytest-check-hook";
      pytest-twisted = python "pytest-twisted";
      hypothesis = python "hypothesis";
      h11 = python "h11";
    };
  writeScriptBin = name: text: built name { inherit text; };
  testers.runNixOSTest = args: built "nixos-test-${args.name}" args;
  nixfmt-rfc-style = package "nixfmt";
})
