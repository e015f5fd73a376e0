# services.llmhop.llama-cpp: one native, hardened system unit per model,
# `llama-cpp-<name>`, running llama.cpp's llama-server on a loopback port.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  llmhopLib = import ./lib.nix { inherit lib; };
  cfg = config.services.llmhop.llama-cpp;
  models = llmhopLib.enabledModels cfg;
  unitName = name: "llama-cpp-${llmhopLib.unitSafe name}";

  # Started one after another, in name order: a unit counts as started only
  # once its model answers (llmhop-notify, Type=notify), so two models never
  # load at the same time.
  ordered = lib.attrNames models;
  previous = llmhopLib.previousUnits unitName ordered;

  # The server runs under llmhop-notify, which sends READY=1 once /health
  # answers 200 (llama-server answers 503 while the model loads), stays the
  # main process and exits as the server did: the unit stays `activating`
  # until the model serves, and fails at once if the server dies loading.
  # llmhop and the model name are in front; host and port come last so that
  # no setting can move the server off the port llmhop routes to.
  commandLine =
    name: model:
    llmhopLib.notifyArguments config (unitName name) model
    ++ [ (lib.getExe' cfg.package "llama-server") ]
    ++ llmhopLib.toFlags ({ alias = name; } // cfg.modelSettings // model.settings)
    ++ model.extraArgs
    # A host ending in .sock is a unix socket to llama-server.
    ++ llmhopLib.listenFlags config (unitName name) model (path: [
      "--host"
      path
    ]);

  unit = name: model: {
    description = "llama.cpp server of model ${name} (llmhop worker)";
    wantedBy = [ "multi-user.target" ];
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ] ++ lib.optional (previous ? ${name}) "${previous.${name}}.service";
    environment = {
      # Models fetched with --hf-repo are kept across restarts and shared by
      # all llama.cpp units (they run as the same dynamic user).
      LLAMA_CACHE = "/var/cache/llama-cpp";
      HOME = "/var/lib/llama-cpp";
    }
    // cfg.environment
    // model.environment;
    inherit (llmhopLib.workerStartLimit) startLimitBurst startLimitIntervalSec;
    serviceConfig =
      llmhopLib.hardening
      // llmhopLib.gpuAccess config.systemd.package.version
      // llmhopLib.workerLifecycle
      // {
        ExecStart = lib.escapeShellArgs (commandLine name model);
        # Downloading and loading a large model takes a while.
        TimeoutStartSec = cfg.startTimeout;
        # One dynamic user for all llama.cpp units, so that they share the
        # model cache.
        User = "llama-cpp";
        Group = "llama-cpp";
        StateDirectory = "llama-cpp";
        CacheDirectory = "llama-cpp";
        WorkingDirectory = "/var/lib/llama-cpp";
        SystemCallFilter = llmhopLib.modelServerSystemCalls;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
      }
      // lib.optionalAttrs (model.port == null) (llmhopLib.socketServiceConfig config (unitName name));
  };
in
{
  options.services.llmhop.llama-cpp = llmhopLib.mkBackendOptions {
    kind = "llama-cpp";
    title = "llama.cpp";
    settingsExample = {
      hf-repo = "ggml-org/gemma-3-1b-it-GGUF";
      ctx-size = 8192;
      n-gpu-layers = 999;
    };
    modelsExample = {
      "gemma-3-1b" = {
        port = 30001;
        settings.hf-repo = "ggml-org/gemma-3-1b-it-GGUF";
      };
    };
    backendOptions = {
      package = lib.mkPackageOption pkgs "llama-cpp" {
        extraDescription = ''
          For a GPU, a build with its backend, e.g.
          `pkgs.llama-cpp.override { cudaSupport = true; }`.
        '';
      };
      startTimeout = mkOption {
        type = types.str;
        default = "1h";
        example = "15min";
        description = ''
          How long a model may take to download and load before its unit
          fails (systemd's `TimeoutStartSec=`).
        '';
      };
    };
  };

  config = lib.mkIf cfg.enable {
    services.llmhop.workers = lib.mapAttrsToList (name: model: {
      kind = "llama-cpp";
      inherit name;
      inherit (model) port route;
      socket = llmhopLib.socketOf config (unitName name);
      group = "llama-cpp";
    }) models;

    # A static group under the dynamic user, so that llmhop can join it to
    # reach the sockets of workers without a port.
    users.groups.llama-cpp = { };

    assertions = [
      (llmhopLib.twinAssertion config "llama-cpp")
      (llmhopLib.unitNamesAssertion "llama-cpp" unitName ordered)
    ];

    systemd.services = lib.mapAttrs' (name: model: lib.nameValuePair (unitName name) (unit name model)) models;
  };
}
