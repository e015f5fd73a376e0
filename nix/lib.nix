# Helpers shared by the llmhop module and its worker modules (llama.cpp,
# sglang, vLLM). Plain functions of nixpkgs' `lib`, so the evaluation test
# can use them without the rest of nixpkgs.
{ lib }:
let
  inherit (lib) mkOption types;
in
rec {
  # The order in which worker kinds start: every model of one kind is up
  # before the next kind loads, so two kinds never compete for GPU memory
  # while both are loading.
  kinds = [
    "llama-cpp"
    "llama-cpp-quadlet"
    "sglang"
    "sglang-quadlet"
    "vllm"
    "vllm-quadlet"
  ];

  # Native kinds run one system unit per model, `<kind>-<name>`.
  nativeKinds = [
    "llama-cpp"
    "sglang"
    "vllm"
  ];

  # The units that count as a kind's models started: a native kind's own,
  # or a container kind's `<kind>-models.service` oneshot, which starts its
  # user units and waits for them.
  startedUnitsOf =
    config: kind:
    if !kindEnabled config kind then
      [ ]
    else if lib.elem kind nativeKinds then
      map (name: "${kind}-${unitSafe name}.service") (lib.attrNames (enabledModels config.services.llmhop.${kind}))
    else
      [ "${lib.removeSuffix "-quadlet" kind}-models.service" ];

  # Whether a worker kind is enabled; the container kinds exist only with
  # nixosModules.quadlet, and are not enabled without it.
  kindEnabled = config: kind: (config.services.llmhop.${kind} or { enable = false; }).enable;

  # A native kind and its container twin use the same unit and user names.
  twinAssertion = config: kind: {
    assertion = !kindEnabled config "${kind}-quadlet";
    message = "services.llmhop.${kind} and services.llmhop.${kind}-quadlet both run units named ${kind}-<model> as user ${kind}: enable one of them.";
  };

  # Models start one after another in name order: { name = the unit before it; }.
  previousUnits =
    unitName: names:
    lib.listToAttrs (lib.zipListsWith (prev: name: lib.nameValuePair name (unitName prev)) names (lib.drop 1 names));

  # Model names are free, unit names are not: two names may give one unit.
  unitNamesAssertion =
    option: unitName: names:
    let
      clashes = duplicates (map unitName names);
    in
    {
      assertion = clashes == [ ];
      message = "services.llmhop.${option}.models: these names give the same unit name: ${lib.concatStringsSep ", " clashes}";
    };

  # Model servers set thread affinities and priorities (torch) and may lock
  # memory (llama.cpp's --mlock): the `hardening` filter less `~@resources`.
  modelServerSystemCalls = [
    "@system-service"
    "~@privileged"
  ];

  # What a kind waits for before its first model loads: every kind before it.
  unitsBefore =
    config: kind: lib.concatMap (startedUnitsOf config) (lib.take (lib.lists.findFirstIndex (k: k == kind) 0 kinds) kinds);

  # `{ hf-repo = "x"; flash-attn = true; ctx-size = 8192; }` ->
  # `[ "--ctx-size" "8192" "--flash-attn" "--hf-repo" "x" ]`; false and null
  # leave the flag out, a list repeats it.
  toFlags = lib.cli.toGNUCommandLine { };

  # Model names are routing names and may hold "/" or ":"
  # ("meta-llama/Llama-3.1-8B"); systemd units and Podman containers allow
  # fewer characters.
  unitSafe =
    name:
    lib.concatMapStrings (c: if builtins.match "[A-Za-z0-9_.-]" c != null then c else "-") (
      lib.stringToCharacters name
    );

  enabledModels = backend: lib.filterAttrs (_: model: model.enable) backend.models;

  # Names that occur more than once in a list.
  duplicates =
    names:
    lib.unique (
      lib.filter (name: lib.length (lib.filter (other: other == name) names) > 1) names
    );

  loopbackUrl = port: "http://127.0.0.1:${toString port}";

  # The `model` option of the kinds that load a Hugging Face repository and
  # answer to the attribute name; `where` says where else a model may be.
  repositoryOption = where: name: {
    type = types.str;
    default = name;
    defaultText = lib.literalMD "the attribute name";
    example = "Qwen/Qwen3-8B";
    description = ''
      The Hugging Face repository (or a path ${where}) the server loads.
      Clients still ask for the attribute name: the server is told to answer
      to it (`--served-model-name`).
    '';
  };

  # Where a server listens: 127.0.0.1 and its port, or, without a port, its
  # unix socket, given to it by `socketFlags` (each server spells that its way).
  listenFlags =
    config: unit: model: socketFlags:
    if model.port != null then
      [
        "--host"
        "127.0.0.1"
        "--port"
        (toString model.port)
      ]
    else
      socketFlags (socketOf config unit);

  # A socket worker's own directory and socket: one directory per unit, so
  # that no worker can delete or take over another's socket.
  socketOf = config: unit: "${config.services.llmhop.socketDirectory}/${unit}/http.sock";
  # Its RuntimeDirectory= (relative to /run): created on start, removed on
  # stop (crashes included), so a restart never finds a stale socket.
  socketRuntimeDirectory = config: unit: "${lib.removePrefix "/run/" config.services.llmhop.socketDirectory}/${unit}";

  # What a worker unit with a unix socket adds to its serviceConfig: the
  # directory (search only for the group, which llmhop joins) and a umask
  # that leaves the socket group-writable (the servers bind with the umask).
  socketServiceConfig = config: unit: {
    RuntimeDirectory = socketRuntimeDirectory config unit;
    RuntimeDirectoryMode = "0710";
    UMask = "0007";
  };

  # llmhop-notify's arguments: the health check on the port, or on the socket.
  notifyArguments =
    config: unit: model:
    [ (lib.getExe' config.services.llmhop.package "llmhop-notify") ]
    ++ (
      if model.port != null then
        [
          "--port"
          (toString model.port)
        ]
      else
        [
          "--socket"
          (socketOf config unit)
        ]
    )
    ++ [ "--" ];

  # One value of a command line flag, as `toFlags` renders it.
  flagValue =
    let
      scalar = types.oneOf [
        types.bool
        types.int
        types.float
        types.str
      ];
    in
    types.nullOr (types.either scalar (types.listOf scalar));

  # Options every worker kind has; `modelOptions` and `backendOptions` add
  # the kind's own.
  mkBackendOptions =
    {
      kind,
      title,
      settingsExample,
      modelsExample,
      modelOptions ? _: { },
      backendOptions ? { },
    }:
    {
      enable = lib.mkEnableOption "${title} workers: one server per model in `models`, each on its own loopback port and registered as a route of llmhop automatically";

      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          HF_HUB_OFFLINE = "1";
        };
        description = ''
          Environment of every ${title} server. It lands in the world-readable
          Nix store: put tokens in `environmentFile` instead.
        '';
      };

      environmentFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/huggingface.env";
        description = ''
          A file of `NAME=value` lines added to the environment of every
          ${title} server (e.g. `HF_TOKEN=…` for gated models). It is read
          when a server starts, never copied into the Nix store. For the
          containers (sglang, vLLM) it must be readable by their `user`:
          rootless Podman reads it.
        '';
      };

      modelSettings = mkOption {
        type = types.attrsOf flagValue;
        default = { };
        example = settingsExample;
        description = ''
          Command line flags for every ${title} model, overridden by a
          model's own `settings`. A name becomes `--name`, `true` a bare flag,
          `false` or `null` nothing, a list a repeated flag.
        '';
      };

      models = mkOption {
        default = { };
        example = modelsExample;
        description = ''
          The models to serve, by the name clients ask for. Each gets its own
          server on `127.0.0.1:port`, and llmhop routes the name to it.
        '';
        type = types.attrsOf (
          types.submodule (
            { name, ... }:
            {
              options = {
                enable = mkOption {
                  type = types.bool;
                  default = true;
                  description = "Whether to run the server of model `${name}`.";
                };
                port = mkOption {
                  type = types.nullOr types.port;
                  default = null;
                  example = 30000;
                  description = ''
                    The loopback port of this model's server; every worker needs
                    its own. `null`: the server listens on a unix socket in a
                    directory of its own below `services.llmhop.socketDirectory`
                    instead, which only llmhop may reach (llama.cpp and vLLM).
                  '';
                };
                settings = mkOption {
                  type = types.attrsOf flagValue;
                  default = { };
                  example = settingsExample;
                  description = ''
                    Command line flags of this model's server, on top of
                    `modelSettings` (same rendering).
                  '';
                };
                environment = mkOption {
                  type = types.attrsOf types.str;
                  default = { };
                  example = {
                    CUDA_VISIBLE_DEVICES = "1";
                  };
                  description = "Environment of this model's server, on top of the kind's `environment`.";
                };
                extraArgs = mkOption {
                  type = types.listOf types.str;
                  default = [ ];
                  example = [ "--verbose" ];
                  description = "Arguments appended to this model's server command line as they are.";
                };
                route = mkOption {
                  type = types.attrsOf types.anything;
                  default = { };
                  example = {
                    maxConcurrentRequests = 16;
                    unlisted = true;
                  };
                  description = ''
                    More keys of this model's llmhop route (README, "Configuration
                    reference"), e.g. a concurrency limit in front of the server;
                    `url` is the worker's own. `healthCheck` is `true` unless set
                    here: llmhop stops sending to a server that stopped answering.
                  '';
                };
              }
              // modelOptions name;
            }
          )
        );
      };
    }
    // backendOptions;

  # The lifecycle every native worker unit shares. llmhop-notify is the main
  # process and says READY=1 once the model answers (Type=notify), and systemd
  # signals only it (KillMode=mixed), which forwards: each signal arrives once.
  # Restarted whatever the exit status (vLLM and SGLang exit 0 after their
  # engine died), until 3 failed starts within an hour show the error instead
  # of a loop.
  workerStartLimit = {
    startLimitBurst = 3;
    startLimitIntervalSec = 3600;
  };
  workerLifecycle = {
    Type = "notify";
    NotifyAccess = "main";
    KillMode = "mixed";
    Restart = "always";
    RestartSec = 10;
  };

  # What a model server's unit needs on top of `hardening` to use a GPU, for
  # the systemd version it runs under (config.systemd.package.version).
  gpuAccess = systemdVersion: {
    # CUDA opens /dev/nvidia*, ROCm /dev/kfd and /dev/dri/renderD*.
    PrivateDevices = false;
    DevicePolicy = "auto";
    # The AMD and Intel device nodes belong to these groups ...
    SupplementaryGroups = [
      "video"
      "render"
    ];
    # ... whose IDs must survive into the unit's user namespace, which
    # `PrivateUsers = true` maps to nobody. `identity` keeps them (systemd
    # 257); older systemd would ignore that value, so it gets none at all.
    PrivateUsers = if lib.versionAtLeast systemdVersion "257" then "identity" else false;
    # Every stack pins the host side of its device buffers; systemd's 8 MiB
    # default reads as out-of-memory despite free VRAM.
    LimitMEMLOCK = "infinity";
    # psutil, torch and NUMA discovery read /proc/meminfo and /proc/cpuinfo.
    ProcSubset = "all";
  };

  # The sandbox every llmhop-managed system unit starts from.
  hardening = {
    DynamicUser = true;
    UMask = "0077";
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateUsers = true;
    PrivateMounts = true;
    DevicePolicy = "closed";
    ProtectProc = "invisible";
    ProcSubset = "pid";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      "~@resources"
    ];
    SystemCallErrorNumber = "EPERM";
    # No MemoryDenyWriteExecute: pyOpenSSL's cffi callbacks (TLS listen
    # addresses, https:// backends) and GPU runtimes map writable and
    # executable memory.
  };
}
