# services.llmhop.llama-cpp-quadlet, .sglang-quadlet and .vllm-quadlet: one
# rootless Podman container per model, rendered by quadlet-nix and run by the
# systemd *user* manager of a lingering system user (`llama-cpp`, `sglang`,
# `vllm`) that owns the model cache, its sub-UID range and its container store.
#
# Why user units, not system units with User=: the system manager's
# `daemon-reload` (which every `nixos-rebuild switch` does) rewrites the
# device cgroup of system units' containers, and GPU containers lose their
# devices ("Failed to initialize NVML: Unknown Error", the
# nvidia-container-toolkit daemon-reload family of issues, #48 and #648). A
# user manager is not reloaded by that.
#
# How: quadlet-nix renders each container (its option types and escaping) into
# the user's ~/.config/containers/systemd, where Podman's user generator turns
# it into a user unit. A system oneshot, `<kind>-models.service`, owns that
# directory and starts, restarts or stops the user units when the
# configuration changes, one model after another.
{
  config,
  lib,
  pkgs,
  options,
  ...
}:
let
  inherit (lib) mkOption types;
  llmhopLib = import ./lib.nix { inherit lib; };

  hasQuadlet = options ? virtualisation && options.virtualisation ? quadlet;
  # quadlet-nix's own container type, so these containers take every option
  # quadlet-nix knows and are escaped the same way.
  containerType =
    if hasQuadlet then options.virtualisation.quadlet.containers.type.nestedTypes.elemType else types.anything;

  # Inside the container, the server listens on all of the container's
  # addresses; Podman publishes the port on the host's loopback only.
  # Python images check health with python3; llama.cpp's has curl and no Python.
  pythonHealthCheck =
    port:
    "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:${toString port}/health', timeout=5)\"";
  huggingFaceCache = {
    mount = "/root/.cache/huggingface";
    environment = {
      HF_HOME = "/root/.cache/huggingface";
    };
  };
  repositoryOption = llmhopLib.repositoryOption "inside the container";

  backends = {
    llama-cpp = {
      title = "llama.cpp";
      image = "ghcr.io/ggml-org/llama.cpp";
      # The server image; `server-cuda`, `server-rocm` or `server-vulkan` for a GPU.
      tag = "server";
      subUidStart = 2000000000;
      settingsExample = {
        ctx-size = 8192;
        n-gpu-layers = 999;
      };
      modelOption = _: {
        type = types.nullOr types.str;
        default = null;
        example = "ggml-org/gemma-3-1b-it-GGUF";
        description = ''
          The Hugging Face repository of a GGUF model (`--hf-repo`); `null`:
          the model comes from `settings` (`hf-repo`, or `model` for a path
          inside the container). The server answers to the attribute name
          (`--alias`).
        '';
      };
      command = name: model: {
        entrypoint = "/app/llama-server";
        exec = [
          "--alias"
          name
        ]
        ++ lib.optionals (model.model != null) [
          "--hf-repo"
          model.model
        ];
      };
      cache = {
        mount = "/root/.cache/llama.cpp";
        environment = {
          LLAMA_CACHE = "/root/.cache/llama.cpp";
        };
      };
      healthCheck = port: "curl -fsS -o /dev/null http://127.0.0.1:${toString port}/health";
    };
    sglang = {
      title = "sglang";
      image = "docker.io/lmsysorg/sglang";
      tag = "latest";
      subUidStart = 2100000000;
      modelOption = repositoryOption;
      cache = huggingFaceCache;
      healthCheck = pythonHealthCheck;
      settingsExample = {
        mem-fraction-static = 0.85;
        context-length = 32768;
      };
      command = name: model: {
        entrypoint = "python3";
        exec = [
          "-m"
          "sglang.launch_server"
          "--model-path"
          model.model
          "--served-model-name"
          name
        ];
      };
    };
    vllm = {
      title = "vLLM";
      image = "docker.io/vllm/vllm-openai";
      tag = "latest";
      subUidStart = 2200000000;
      modelOption = repositoryOption;
      cache = huggingFaceCache;
      healthCheck = pythonHealthCheck;
      settingsExample = {
        max-model-len = 32768;
        gpu-memory-utilization = 0.9;
      };
      command = name: model: {
        entrypoint = "vllm";
        exec = [
          "serve"
          model.model
          "--served-model-name"
          name
        ];
      };
    };
  };

  # Options live at services.llmhop.<kind>-quadlet; units, users and
  # commands keep the plain name (vllm-<model>, user vllm, vllm-shell), which
  # is why a kind and its native twin cannot both be enabled.
  optionName = kind: "${kind}-quadlet";

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
        model = mkOption (spec.modelOption name);
        shmSize = mkOption {
          type = types.str;
          default = "16g";
          example = "32g";
          description = "The size of the container's /dev/shm (tensor parallel workers talk through it).";
        };
      };
      backendOptions = {
        image = mkOption {
          type = types.str;
          default = spec.image;
          description = "The ${spec.title} container image, without tag.";
        };
        tag = mkOption {
          type = types.str;
          default = spec.tag;
          example = "v0.11.0";
          description = "The image tag. Pin one: `latest` changes under you when the image is pulled again.";
        };
        package = mkOption {
          type = types.nullOr types.package;
          default = null;
          example = lib.literalExpression ''
            pkgs.dockerTools.pullImage {
              imageName = "${spec.image}";
              imageDigest = "sha256:…";
              hash = "sha256-…";
            }
          '';
          description = ''
            The image as a Nix package (an image archive, e.g. from
            `pkgs.dockerTools`), loaded from the Nix store instead of pulling
            `image`:`tag` from a registry: pinned by its hash, and no registry
            is needed when the machine starts.
          '';
        };
        user = mkOption {
          type = types.str;
          default = kind;
          description = ''
            The user whose systemd user manager runs the containers. The
            default user is created as a system user (home
            `/var/lib/${kind}`, holding the container store), together with
            a `${kind}-shell` command that opens a login shell as it
            (`podman ps`, `systemctl --user status`, `journalctl --user`).
            Another user must exist already; it is given lingering and the
            sub-UID range below.
          '';
        };
        cacheDir = mkOption {
          type = types.str;
          default = "/var/cache/${kind}";
          description = ''
            The model cache on the host (Hugging Face's, or llama.cpp's),
            owned by `user` and mounted into every container, so models are
            downloaded once.
          '';
        };
        subUidStart = mkOption {
          type = types.ints.unsigned;
          default = spec.subUidStart;
          description = ''
            The first of the sub-UIDs and sub-GIDs of `user` (the container's
            users map to them). The default lies far above NixOS's automatic
            ranges (100000 + 65536·n).
          '';
        };
        subUidCount = mkOption {
          type = types.ints.positive;
          default = 65536;
          description = "How many sub-UIDs and sub-GIDs `user` gets.";
        };
        devices = mkOption {
          type = types.listOf types.str;
          default = [ "nvidia.com/gpu=all" ];
          example = [ "nvidia.com/gpu=0" ];
          description = ''
            Devices given to every container: CDI names (NVIDIA's need
            `hardware.nvidia-container-toolkit.enable`) or device paths.
          '';
        };
        startTimeout = mkOption {
          type = types.str;
          default = "1h";
          example = "20min";
          description = ''
            How long a container may take to pull, download its model and
            become healthy before its unit fails.
          '';
        };
        scripts = mkOption {
          type = types.attrsOf types.package;
          internal = true;
          readOnly = true;
          description = "The scripts of `${kind}-models.service` (apply, stop).";
        };
        containers = mkOption {
          type = types.attrsOf containerType;
          internal = true;
          visible = false;
          default = { };
          description = "The quadlet-nix containers rendered from `models`.";
        };
      };
    };

  backendConfig =
    kind: spec:
    let
      option = optionName kind;
      cfg = config.services.llmhop.${option};
      models = llmhopLib.enabledModels cfg;
      unitName = name: "${kind}-${llmhopLib.unitSafe name}";
      ordered = lib.attrNames models;
      isDefaultUser = cfg.user == kind;
      group = if isDefaultUser then kind else config.users.users.${cfg.user}.group;
      home = if isDefaultUser then "/var/lib/${kind}" else config.users.users.${cfg.user}.home;

      container = index: name: model: {
        containerConfig = {
          inherit (spec.command name model) entrypoint;
          # The server's own flags; host and port last so that no setting can
          # move it off the port llmhop routes to.
          exec =
            (spec.command name model).exec
            ++ llmhopLib.toFlags (cfg.modelSettings // model.settings)
            ++ model.extraArgs
            ++ [
              "--host"
              "0.0.0.0"
              "--port"
              (toString model.port)
            ];
          image = if cfg.package != null then "docker-archive:${cfg.package}" else "${cfg.image}:${cfg.tag}";
          devices = cfg.devices;
          publishPorts = [ "127.0.0.1:${toString model.port}:${toString model.port}" ];
          volumes = [ "${cfg.cacheDir}:${spec.cache.mount}" ];
          environments = spec.cache.environment // cfg.environment
          // model.environment;
          environmentFiles = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
          shmSize = model.shmSize;
          # The unit counts as started once the server answers, which is
          # what makes "one model after another" mean something.
          notify = "healthy";
          healthCmd = spec.healthCheck model.port;
          healthInterval = "10s";
          healthRetries = 3;
          healthStartPeriod = cfg.startTimeout;
        };
        unitConfig = {
          Description = "${spec.title} server of model ${name} (llmhop worker)";
          StartLimitBurst = 3;
          StartLimitIntervalSec = 3600;
        }
        // lib.optionalAttrs (index > 0) {
          After = "${unitName (lib.elemAt ordered (index - 1))}.service";
        };
        serviceConfig = {
          TimeoutStartSec = cfg.startTimeout;
          # vLLM and SGLang exit 0 after their engine died: restart whatever
          # the status, until 3 failed starts within an hour.
          Restart = "always";
          RestartSec = 30;
        };
      };

      quadlets = lib.mapAttrs' (
        name: c: lib.nameValuePair c.ref (pkgs.writeText c.ref c._configText)
      ) cfg.containers;
      unitDir = pkgs.linkFarm "${kind}-quadlets" quadlets;
      units = map (name: "${unitName name}.service") ordered;
      hashes = lib.listToAttrs (
        map (
          name:
          lib.nameValuePair "${unitName name}.service" (
            builtins.hashString "sha256" cfg.containers.${unitName name}._configText
          )
        ) ordered
      );

      userctl = ''systemctl --user --machine=${lib.escapeShellArg "${cfg.user}@"}'';
      apply = pkgs.writeShellApplication {
        name = "${kind}-models-apply";
        runtimeInputs = [
          pkgs.coreutils
          pkgs.systemd
        ];
        text = ''
          state="$STATE_DIRECTORY"
          uid=$(id -u ${lib.escapeShellArg cfg.user})
          systemctl start "user@$uid.service"
          install -d -o ${lib.escapeShellArg cfg.user} -g ${lib.escapeShellArg group} -m 0700 \
            ${lib.escapeShellArg "${home}/.config"} ${lib.escapeShellArg "${home}/.config/containers"}
          ln -sfn ${unitDir} ${lib.escapeShellArg "${home}/.config/containers/systemd"}
          ${userctl} daemon-reload

          declare -A want=(${
            lib.concatStrings (lib.mapAttrsToList (unit: hash: "[${unit}]=${hash} ") hashes)
          })
          # Models that are gone, or whose container changed, are stopped.
          for file in "$state"/*.service; do
            [ -e "$file" ] || continue
            unit=$(basename "$file")
            if [ "''${want[$unit]:-}" != "$(cat "$file")" ]; then
              ${userctl} stop "$unit" || true
              rm -f "$file"
            fi
          done
          for unit in "''${!want[@]}"; do
            printf '%s' "''${want[$unit]}" > "$state/$unit"
          done
          # One transaction: the After= chain loads them one by one. At boot
          # this returns once all are healthy (or one failed), so the next
          # kind waits; a switch passes --no-block rather than wait for them.
          ${lib.optionalString (units != [ ]) ''${userctl} start "$@" ${lib.escapeShellArgs units}''}
        '';
      };
      stop = pkgs.writeShellApplication {
        name = "${kind}-models-stop";
        runtimeInputs = [ pkgs.systemd ];
        text = ''
          ${lib.optionalString (units != [ ]) "${userctl} stop ${lib.escapeShellArgs units} || true"}
          rm -f ${lib.escapeShellArg "${home}/.config/containers/systemd"} "$STATE_DIRECTORY"/*.service
        '';
      };
    in
    lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = hasQuadlet;
          message = "services.llmhop.${option} runs its containers through quadlet-nix: import quadlet-nix's NixOS module (llmhop's flake output nixosModules.quadlet does).";
        }
        {
          assertion = lib.all (model: model.port != null) (lib.attrValues models);
          message = "services.llmhop.${option}.models: containers are reached on a loopback port; give each a port: ${lib.concatStringsSep ", " (lib.attrNames (lib.filterAttrs (_: model: model.port == null) models))}";
        }
        (llmhopLib.unitNamesAssertion option unitName ordered)
      ];

      services.llmhop.workers = lib.mapAttrsToList (name: model: {
        kind = option;
        inherit name;
        inherit (model) port route;
      }) models;

      services.llmhop.${option} = {
        scripts = { inherit apply stop; };
        containers = lib.listToAttrs (
          lib.imap0 (index: name: lib.nameValuePair (unitName name) (container index name models.${name})) ordered
        );
      };

      # Podman, its user generator and the newuidmap wrappers. (Guarded, so
      # that without quadlet-nix the assertion above is what the user sees.)
      virtualisation = lib.optionalAttrs hasQuadlet { quadlet.enable = true; };

      users.users.${cfg.user} = lib.mkMerge [
        {
          # Its user manager runs from boot on, without a login.
          linger = true;
          subUidRanges = [
            {
              startUid = cfg.subUidStart;
              count = cfg.subUidCount;
            }
          ];
          subGidRanges = [
            {
              startGid = cfg.subUidStart;
              count = cfg.subUidCount;
            }
          ];
        }
        (lib.mkIf isDefaultUser {
          isSystemUser = true;
          group = kind;
          description = "${spec.title} model containers (llmhop)";
          inherit home;
          createHome = true;
          # For ${kind}-shell (machinectl shell).
          useDefaultShell = true;
        })
      ];
      users.groups = lib.mkIf isDefaultUser { ${kind} = { }; };

      systemd.tmpfiles.rules = [ "d ${cfg.cacheDir} 0700 ${cfg.user} ${group} - -" ];

      systemd.services."${kind}-models" = {
        description = "${spec.title} model containers of user ${cfg.user}, started one after another (llmhop workers)";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "systemd-tmpfiles-setup.service"
        ]
        ++ llmhopLib.unitsBefore config option;
        # A new configuration is applied in place: only the containers that
        # changed are restarted.
        reloadIfChanged = true;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = lib.getExe apply;
          ExecReload = "${lib.getExe apply} --no-block";
          ExecStop = lib.getExe stop;
          TimeoutStartSec = "infinity";
          StateDirectory = "llmhop-${kind}";
        };
      };

      environment.systemPackages = lib.mkIf isDefaultUser [
        (pkgs.writeShellApplication {
          name = "${kind}-shell";
          runtimeInputs = [ pkgs.systemd ];
          text = ''exec machinectl shell ${lib.escapeShellArg "${cfg.user}@"} "$@"'';
        })
      ];
    };
in
{
  options.services.llmhop = lib.mapAttrs' (
    kind: spec: lib.nameValuePair (optionName kind) (backendOptions kind spec)
  ) backends;

  config = lib.mkMerge (
    lib.mapAttrsToList backendConfig backends
    ++ [
      {
        # Every pair of enabled container kinds: their sub-UID ranges apart.
        assertions =
          let
            enabled = lib.filter (kind: config.services.llmhop.${optionName kind}.enable) (lib.attrNames backends);
            range = kind: config.services.llmhop.${optionName kind};
            apart = a: b: a.subUidStart + a.subUidCount <= b.subUidStart || b.subUidStart + b.subUidCount <= a.subUidStart;
            pairs = lib.concatMap (a: map (b: { inherit a b; }) (lib.filter (b: a < b) enabled)) enabled;
          in
          map (pair: {
            assertion = apart (range pair.a) (range pair.b);
            message = "services.llmhop.${optionName pair.a} and services.llmhop.${optionName pair.b}: their sub-UID ranges overlap.";
          }) pairs;
      }
    ]
  );
}
