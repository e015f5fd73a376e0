# services.llmhop.sglang and services.llmhop.vllm: one native, hardened
# system unit per model, `sglang-<name>` or `vllm-<name>`, running the server
# from a Nix package on a loopback port. Their Podman twins are
# services.llmhop.sglang-quadlet and services.llmhop.vllm-quadlet
# (containers.nix); a kind and its twin use the same unit and user names, so
# only one of the two may be enabled.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  llmhopLib = import ./lib.nix { inherit lib; };

  backends = {
    sglang = {
      title = "SGLang";
      packageDescription = ''
        A Python environment with SGLang, whose `bin/python3` runs
        `-m sglang.launch_server`, e.g.
        `pkgs.python3.withPackages (ps: [ ps.sglang ])`.
      '';
      packageDefault = null;
      packageExample = "pkgs.python3.withPackages (ps: [ ps.sglang ])";
      settingsExample = {
        mem-fraction-static = 0.85;
        context-length = 32768;
      };
      # No unix socket option: its workers need a port.
      socket = null;
      command = package: name: model: [
        (lib.getExe' package "python3")
        "-m"
        "sglang.launch_server"
        "--model-path"
        model.model
        "--served-model-name"
        name
      ];
    };
    vllm = {
      title = "vLLM";
      packageDescription = ''
        A package providing `bin/vllm`: nixpkgs' `vllm` (built with CUDA
        when `nixpkgs.config.cudaSupport` is set), or a Python environment of
        your own.
      '';
      packageDefault = pkgs.vllm or null;
      packageExample = "pkgs.python3.withPackages (ps: [ ps.vllm ])";
      settingsExample = {
        max-model-len = 32768;
        gpu-memory-utilization = 0.9;
      };
      socket = path: [
        "--uds"
        path
      ];
      command = package: name: model: [
        (lib.getExe' package "vllm")
        "serve"
        model.model
        "--served-model-name"
        name
      ];
    };
  };

  # Every accelerator stack compiles kernels on first use and caches them
  # under $HOME, which ProtectSystem=strict makes read-only: send them all to
  # the unit's cache directory (the one place `systemctl clean` reaches).
  # Variables of a stack that is not installed are never read.
  cacheEnvironment = cache: {
    HOME = cache;
    XDG_CACHE_HOME = cache;
    HF_HOME = "${cache}/huggingface";
    TRITON_CACHE_DIR = "${cache}/triton";
    TORCHINDUCTOR_CACHE_DIR = "${cache}/torchinductor";
    CUDA_CACHE_PATH = "${cache}/nv";
    VLLM_CACHE_ROOT = "${cache}/vllm";
    # One node: NCCL (and RCCL) stay on loopback, off any InfiniBand fabric.
    NCCL_SOCKET_IFNAME = "lo";
    NCCL_IB_DISABLE = "1";
  };

  backendOptions =
    kind: spec:
    llmhopLib.mkBackendOptions {
      inherit kind;
      inherit (spec) title settingsExample;
      modelsExample = {
        "qwen3-8b" = {
          port = 30010;
          model = "Qwen/Qwen3-8B";
        };
      };
      modelOptions = name: {
        model = mkOption (llmhopLib.repositoryOption "on this machine" name);
        package = mkOption {
          type = types.nullOr types.package;
          default = null;
          example = lib.literalExpression spec.packageExample;
          description = "This model's ${spec.title} package, instead of the kind's `package`.";
        };
      };
      backendOptions = {
        package = mkOption {
          type = types.nullOr types.package;
          default = spec.packageDefault;
          defaultText =
            if spec.packageDefault == null then lib.literalExpression "null" else lib.literalExpression "pkgs.${kind}";
          example = lib.literalExpression spec.packageExample;
          description = spec.packageDescription;
        };
        startTimeout = mkOption {
          type = types.str;
          default = "1h";
          example = "2h";
          description = ''
            How long a model may take to download, load and profile GPU memory
            before its unit fails (systemd's `TimeoutStartSec=`).
          '';
        };
      };
    };

  backendConfig =
    kind: spec:
    let
      cfg = config.services.llmhop.${kind};
      models = llmhopLib.enabledModels cfg;
      unitName = name: "${kind}-${llmhopLib.unitSafe name}";
      ordered = lib.attrNames models;
      previous = llmhopLib.previousUnits unitName ordered;
      packageOrNull = model: if model.package != null then model.package else cfg.package;
      packageOf =
        model:
        let
          package = packageOrNull model;
        in
        if package != null then package else throw packageMissing;
      packageMissing = "services.llmhop.${kind}.package: set it (or each model's `package`) to ${lib.replaceStrings [ "\n" ] [ " " ] spec.packageDescription}";
      cache = "/var/cache/${kind}";

      # Host and port come last, so that no setting moves the server off the
      # port llmhop routes to; llmhop-notify holds the unit in `activating`
      # until /health answers (see llama-cpp.nix).
      commandLine =
        name: model:
        llmhopLib.notifyArguments config (unitName name) model
        ++ spec.command (packageOf model) name model
        ++ llmhopLib.toFlags (cfg.modelSettings // model.settings)
        ++ model.extraArgs
        ++ llmhopLib.listenFlags config (unitName name) model spec.socket;

      unit = name: model: {
        description = "${spec.title} server of model ${name} (llmhop worker)";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        # One model after another (GPU-memory profiling of two at once races
        # for the same memory), after every model of the kinds before.
        after = [
          "network-online.target"
        ]
        ++ lib.optional (previous ? ${name}) "${previous.${name}}.service"
        ++ llmhopLib.unitsBefore config kind;
        environment = cacheEnvironment cache // cfg.environment // model.environment;
        # These runtimes build kernels and extensions while serving: Triton
        # looks for a C compiler, torch's and flashinfer's JIT drive ninja,
        # which spawns `sh` from PATH.
        path = [
          pkgs.bash
          pkgs.coreutils
          pkgs.gcc
          pkgs.ninja
        ];
        inherit (llmhopLib.workerStartLimit) startLimitBurst startLimitIntervalSec;
        serviceConfig =
          llmhopLib.hardening
          // llmhopLib.gpuAccess config.systemd.package.version
          // llmhopLib.workerLifecycle
          // {
            ExecStart = lib.escapeShellArgs (commandLine name model);
            TimeoutStartSec = cfg.startTimeout;
            # A real user, not DynamicUser: DynamicUser's state and cache
            # directories are ID-mapped mounts, always noexec, and these
            # runtimes dlopen the kernels they compile there.
            DynamicUser = false;
            User = kind;
            Group = kind;
            StateDirectory = kind;
            CacheDirectory = kind;
            WorkingDirectory = "/var/lib/${kind}";
            # NCCL's interface scan (getifaddrs) opens a netlink socket.
            RestrictAddressFamilies = llmhopLib.hardening.RestrictAddressFamilies ++ [ "AF_NETLINK" ];
            SystemCallFilter = llmhopLib.modelServerSystemCalls;
            EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
          }
          // lib.optionalAttrs (model.port == null) (llmhopLib.socketServiceConfig config (unitName name));
      };
      socketless = lib.attrNames (lib.filterAttrs (_: model: model.port == null) models);
    in
    lib.mkIf cfg.enable {
      assertions = [
        (llmhopLib.twinAssertion config kind)
        {
          assertion = lib.all (model: packageOrNull model != null) (lib.attrValues models);
          message = packageMissing;
        }
        {
          assertion = spec.socket != null || socketless == [ ];
          message = "services.llmhop.${kind}.models: ${spec.title} cannot listen on a unix socket; give these a port: ${lib.concatStringsSep ", " socketless}";
        }
        (llmhopLib.unitNamesAssertion kind unitName ordered)
      ];

      services.llmhop.workers = lib.mapAttrsToList (name: model: {
        inherit kind name;
        inherit (model) port route;
        socket = llmhopLib.socketOf config (unitName name);
        group = kind;
      }) models;

      users.users.${kind} = {
        isSystemUser = true;
        group = kind;
        home = "/var/lib/${kind}";
      };
      users.groups.${kind} = { };

      systemd.services = lib.mapAttrs' (name: model: lib.nameValuePair (unitName name) (unit name model)) models;
    };
in
{
  options.services.llmhop = lib.mapAttrs backendOptions backends;

  config = lib.mkMerge (lib.mapAttrsToList backendConfig backends);
}
