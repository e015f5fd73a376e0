# services.llmhop: the router as a hardened systemd service, and (through the
# imported worker modules) llama.cpp, sglang and vLLM servers whose models it
# routes to automatically.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  llmhopLib = import ./lib.nix { inherit lib; };
  cfg = config.services.llmhop;
  format = pkgs.formats.json { };

  # A worker's route is health-checked unless its `route` says otherwise: a
  # server that died or reloads is taken out of rotation within seconds.
  workerModels = lib.listToAttrs (
    map (
      worker:
      lib.nameValuePair worker.name (
        { healthCheck = true; } // worker.route // { url = workerUrl worker; }
      )
    ) cfg.workers
  );

  workerUrl =
    worker: if worker.port != null then llmhopLib.loopbackUrl worker.port else "unix:${worker.socket}";
  # The groups of socket workers, which llmhop joins to reach their sockets.
  socketGroups = lib.sort lib.lessThan (
    lib.unique (map (worker: worker.group) (lib.filter (worker: worker.port == null) cfg.workers))
  );

  # Unset optional keys are left out, so that llmhop's own defaults apply;
  # but `retryOn = [ ]` is set: it turns retries off.
  unset = value: value == null || value == false || value == { } || value == [ ];
  renderValue =
    key: value:
    if key == "healthCheck" && builtins.isAttrs value then renderHealthCheck value else value;
  # A check with every field at its default is `true`, which llmhop reads the same.
  renderHealthCheck =
    check:
    let
      set = lib.filterAttrs (_: field: field != null) check;
    in
    if set == { } then true else set;
  kept = key: value: if key == "retryOn" then value != null else !(unset value);
  renderModel = model: lib.filterAttrs kept (lib.mapAttrs renderValue model);
  metrics = renderModel cfg.settings.metrics;
  cors = renderModel cfg.settings.cors;
  rendered =
    lib.filterAttrs (_: value: !(unset value)) (
      removeAttrs cfg.settings [
        "models"
        "metrics"
        "cors"
      ]
    )
    // {
      models = lib.mapAttrs (_: renderModel) cfg.settings.models // workerModels;
    }
    // lib.optionalAttrs (metrics != { }) { inherit metrics; }
    // lib.optionalAttrs (cors != { }) { inherit cors; };

  healthCheckType = types.submodule {
    options = {
      path = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/health";
        description = "The path probed; `null`: `/health`.";
      };
      interval = mkOption {
        type = types.nullOr (types.either types.ints.positive types.float);
        default = null;
        example = 5;
        description = "Seconds between probes; `null`: 5.";
      };
      timeout = mkOption {
        type = types.nullOr (types.either types.ints.positive types.float);
        default = null;
        example = 2;
        description = "Seconds a probe may take; `null`: 2.";
      };
      failures = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 2;
        description = "Failed probes in a row that take a replica down; `null`: 2.";
      };
    };
  };

  rawConfigFile = format.generate "llmhop-config.json" rendered;
  # Secrets are not there at build time (they come from the environment or
  # $CREDENTIALS_DIRECTORY when the service starts): check all but them.
  checkedConfigFile =
    pkgs.runCommand "llmhop-config.json" { nativeBuildInputs = [ cfg.package ]; }
      ''
        llmhop --check --no-secrets --config ${rawConfigFile}
        cp ${rawConfigFile} $out
      '';

  workerNames = map (worker: worker.name) cfg.workers;
  workerPorts = lib.filter (port: port != null) (map (worker: worker.port) cfg.workers);
  nameClashes = llmhopLib.duplicates (workerNames ++ lib.attrNames cfg.settings.models);
  # The TCP ports llmhop itself listens on: every `listen` address (host:port,
  # :port, [v6]:port, or a tcp/tcp6/ssl endpoint) and `metrics.listen`.
  listenPort =
    address:
    let
      endpoint = builtins.match "(tcp6?|ssl|tls):([0-9]+).*" address;
      hostPort = builtins.match "([^:]*|\\[[^]]*]):([0-9]+)" address;
    in
    if endpoint != null then
      [ (lib.toInt (lib.elemAt endpoint 1)) ]
    else if hostPort != null then
      [ (lib.toInt (lib.elemAt hostPort 1)) ]
    else
      [ ];
  routerPorts = lib.concatMap listenPort (
    lib.toList cfg.settings.listen ++ lib.optional (cfg.settings.metrics.listen != null) cfg.settings.metrics.listen
  );
  # One registry of ports: workers of every kind and llmhop's own addresses.
  portClashes = lib.sort lib.lessThan (llmhopLib.duplicates (workerPorts ++ lib.optionals cfg.enable routerPorts));
in
{
  # The container variants are in ./quadlet.nix (nixosModules.quadlet), so
  # that this module needs nothing but nixpkgs.
  imports = [
    ./llama-cpp.nix
    ./python-servers.nix
  ];

  options.services.llmhop = {
    enable = lib.mkEnableOption "llmhop, one OpenAI-compatible endpoint in front of many inference servers, routed by model";

    package = mkOption {
      type = types.package;
      # Not `pkgs.llmhop`: a package of that name in nixpkgs need not be this
      # one (the overlay provides it for those who want it).
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      example = lib.literalExpression "pkgs.llmhop";
      description = "The llmhop package to run; the default is built from the flake's own source.";
    };

    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = ''
        The address llmhop listens on. The default keeps it to this machine;
        set `0.0.0.0` or `::` (and `openFirewall`) to serve other hosts.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 8080;
      description = "The TCP port llmhop listens on.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open `port` in the firewall.";
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/llmhop.env";
      description = ''
        A file of `NAME=value` lines for the service's environment, read when
        it starts and never copied into the Nix store; `settings` refers to its
        values as `''${env:NAME}`.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        openai_key = "/run/secrets/openai-key";
      };
      description = ''
        Secret files handed to the service with systemd's `LoadCredential=`
        (credential name to the file's path). `settings` refers to one as
        `''${file:NAME}`; llmhop reads it from `$CREDENTIALS_DIRECTORY`, a
        private tmpfs of this unit, so the file itself may stay readable by
        root alone.
      '';
    };

    settings = mkOption {
      default = { };
      example = lib.literalExpression ''
        {
          authTokens = [ "''${file:client_token}" ];
          models."gpt-4o" = {
            url = "https://api.openai.com";
            headers.Authorization = "Bearer ''${env:OPENAI_API_KEY}";
          };
        }
      '';
      description = ''
        llmhop's configuration (README, "Configuration"), rendered to JSON and
        checked with `llmhop --check --no-secrets` at build time. The models of
        the worker modules are added to `models` by themselves.

        Everything here is written to the world-readable Nix store: refer to
        secrets with `''${env:NAME}` (see `environmentFile`) or
        `''${file:NAME}` (see `credentials`), never write them in.
      '';
      type = types.submodule {
        freeformType = format.type;
        options = {
          listen = mkOption {
            type = types.either types.str (types.nonEmptyListOf types.str);
            default =
              if lib.hasInfix ":" cfg.host then
                "[${cfg.host}]:${toString cfg.port}"
              else
                "${cfg.host}:${toString cfg.port}";
            defaultText = lib.literalExpression ''"''${host}:''${toString port}"'';
            example = [
              "127.0.0.1:8080"
              "unix:/run/llmhop/llmhop.sock"
            ];
            description = ''
              Where llmhop listens: one address or a list, all served; made
              from `host` and `port` unless set (a unix socket belongs under
              `/run/llmhop/`).
            '';
          };
          authTokens = mkOption {
            type = types.listOf (types.either types.str format.type);
            default = [ ];
            example = [
              "\${file:client_token}"
              {
                token = "\${file:team-a}";
                name = "team-a";
                models = [ "qwen/*" ];
              }
            ];
            description = ''
              Tokens clients must send (as `Authorization: Bearer`, `x-api-key`,
              `x-goog-api-key` or `api-key`); empty lets every client in. Strings,
              or objects with `token`, `name` and the `models` the token may use.
              Use secret references, not the tokens themselves.
            '';
          };
          workers = mkOption {
            type = types.either (types.ints.between 1 256) (types.enum [ "auto" ]);
            default = "auto";
            example = 2;
            description = ''
              Router processes sharing the listening sockets, or `"auto"`: one
              per CPU the unit may use (its `CPUAffinity=` and `CPUQuota=`).
              Each costs about 55 MiB of memory.
            '';
          };
          maxBodyBytes = mkOption {
            type = types.nullOr types.ints.positive;
            default = null;
            example = 33554432;
            description = "The largest request body accepted; `null` keeps llmhop's default.";
          };
          metrics = {
            public = mkOption {
              type = types.bool;
              default = false;
              description = "Serve `/metrics` without a client token.";
            };
            listen = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "127.0.0.1:9108";
              description = ''
                Serve `/metrics` only on this address of its own (no client token
                there), rather than on the main port.
              '';
            };
          };
          cors.allowOrigins = mkOption {
            type = types.listOf types.str;
            default = [ ];
            example = [ "https://chat.example" ];
            description = ''
              Origins (`scheme://host[:port]`, or `"*"`) whose browsers may call
              llmhop directly; none by default.
            '';
          };
          models = mkOption {
            default = { };
            example = {
              "gpt-4o".url = "https://api.openai.com";
              "llama-3-70b".url = "http://10.0.0.5:8000";
            };
            description = "Routes by model name, besides those of the worker modules.";
            type = types.attrsOf (
              types.submodule {
                freeformType = format.type;
                options = {
                  url = mkOption {
                    type = types.either types.str (types.nonEmptyListOf types.str);
                    example = [
                      "http://10.0.0.5:8000"
                      "unix:/run/vllm/qwen.sock"
                    ];
                    description = ''
                      The backend's base URL (`http://`, `https://`, or
                      `unix:/path.sock` with an optional `:/prefix`); its path is kept
                      as a prefix. A list: replicas of one model, with failover.
                    '';
                  };
                  model = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                    example = "Qwen/Qwen3-8B";
                    description = "The model name the backend expects, put in the forwarded body.";
                  };
                  stripPrefix = mkOption {
                    type = types.bool;
                    default = false;
                    description = "For a prefix route (a name ending in `*`): forward the name without the prefix.";
                  };
                  unlisted = mkOption {
                    type = types.bool;
                    default = false;
                    description = "Routable, but not listed in /v1/models.";
                  };
                  maxConcurrentRequests = mkOption {
                    type = types.nullOr types.ints.positive;
                    default = null;
                    example = 16;
                    description = "Requests forwarded at once (per router process); more wait in a FIFO queue.";
                  };
                  maxQueuedRequests = mkOption {
                    type = types.nullOr types.ints.unsigned;
                    default = null;
                    example = 64;
                    description = "How many may wait for that limit before the answer is 429; `null`: llmhop's default, 100.";
                  };
                  headers = mkOption {
                    type = types.attrsOf types.str;
                    default = { };
                    example = {
                      Authorization = "Bearer \${env:OPENAI_API_KEY}";
                    };
                    description = "Headers set on every request to this backend (secret references allowed).";
                  };
                  healthCheck = mkOption {
                    type = types.either types.bool healthCheckType;
                    default = false;
                    example = {
                      interval = 2;
                      failures = 3;
                    };
                    description = ''
                      Probe each replica and send it nothing while it is down: `true`,
                      or `{ path, interval, timeout, failures }` (unset fields keep
                      llmhop's defaults: `GET /health` every 5 s, 2 s per probe, down
                      after 2 failures). Worker models are checked by default; their
                      `route.healthCheck = false` turns that off.
                    '';
                  };
                  retryOn = mkOption {
                    type = types.nullOr (types.listOf (types.ints.between 100 599));
                    default = null;
                    example = [ ];
                    description = ''
                      Answers that make llmhop try the next replica (or a fallback);
                      `null`: llmhop's default, `[ 429 503 ]`; `[ ]` turns retries off.
                    '';
                  };
                  fallbacks = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                    example = [ "gpt-4o" ];
                    description = "Other routes tried in order when this one cannot take a request.";
                  };
                  policy = mkOption {
                    type = types.nullOr (
                      types.enum [
                        "least-in-flight"
                        "prefix-affinity"
                        "session-affinity"
                      ]
                    );
                    default = null;
                    example = "prefix-affinity";
                    description = ''
                      How a replica is chosen; `null`: llmhop's default, `least-in-flight`.
                      `prefix-affinity` sends requests sharing a prompt prefix to one
                      replica (its prompt cache), `session-affinity` those of one session.
                    '';
                  };
                };
              }
            );
          };
        };
      };
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = checkedConfigFile;
      defaultText = lib.literalMD "the rendered and checked `settings`";
      description = "The JSON configuration the service runs with (read-only; for inspection).";
    };

    renderedSettings = mkOption {
      type = types.attrsOf types.anything;
      internal = true;
      readOnly = true;
      default = rendered;
      description = "`settings` with the workers' routes, as written to `configFile`.";
    };

    socketDirectory = mkOption {
      type = types.strMatching "/run/[^ ]+";
      default = "/run/llmhop-workers";
      description = ''
        Where workers without a `port` keep their unix sockets, one directory
        per unit (`<dir>/<unit>/http.sock`). The directory itself may be
        passed through but not listed; each unit's own is open to its group,
        which llmhop joins. Under `/run`, so that systemd creates and removes
        each unit's directory with it.
      '';
    };

    workers = mkOption {
      internal = true;
      visible = false;
      default = [ ];
      description = "Every enabled worker model, contributed by the worker modules.";
      type = types.listOf (
        types.submodule {
          options = {
            kind = mkOption { type = types.enum llmhopLib.kinds; };
            name = mkOption { type = types.str; };
            port = mkOption { type = types.nullOr types.port; };
            # With no port: the socket it listens on, and its group.
            socket = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            group = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            route = mkOption {
              type = types.attrsOf types.anything;
              default = { };
            };
          };
        }
      );
    };
  };

  config = lib.mkMerge [
    {
      assertions = [
        {
          assertion = nameClashes == [ ];
          message = "services.llmhop: model names used twice (worker models and settings.models share one namespace): ${lib.concatStringsSep ", " nameClashes}";
        }
        {
          assertion = lib.all (worker: !(worker.route ? url)) cfg.workers;
          message = "services.llmhop: a worker model's `route` cannot set `url`; it is the worker's own.";
        }
        {
          assertion = portClashes == [ ];
          message = "services.llmhop: ports used twice (workers of every kind, llmhop's listen addresses and metrics.listen): ${lib.concatMapStringsSep ", " toString portClashes}";
        }
      ];
    }

    (lib.mkIf cfg.enable {
      # A stable path, so that a new configuration is a reload (SIGHUP), not a
      # restart that would cut open streams.
      environment.etc."llmhop/config.json".source = cfg.configFile;

      networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];

      systemd.tmpfiles.rules = lib.mkIf (socketGroups != [ ]) [ "d ${cfg.socketDirectory} 0711 root root - -" ];

      warnings = lib.optional (
        cfg.openFirewall && lib.elem cfg.host [ "127.0.0.1" "::1" "localhost" ]
      ) "services.llmhop.openFirewall opens port ${toString cfg.port}, but llmhop listens on ${cfg.host} only.";

      systemd.services.llmhop = {
        description = "llmhop: one HTTP port in front of many OpenAI-compatible inference servers";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        # A changed config is applied with SIGHUP (in-flight streams finish on
        # the old routes); what a reload can't change needs a restart.
        reloadTriggers = [ cfg.configFile ];
        restartTriggers = [
          (builtins.toJSON cfg.settings.listen)
          (toString cfg.settings.workers)
        ];
        serviceConfig = llmhopLib.hardening // {
          Type = "notify";
          ExecStart = "${lib.getExe cfg.package} --config /etc/llmhop/config.json";
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = 5;
          # SIGTERM goes to the first process, which drains and stops its
          # workers; what is left after the drain delay (/ready at 503 while
          # still serving) and the grace period is killed.
          KillMode = "mixed";
          TimeoutStopSec =
            let
              timeouts = cfg.settings.timeouts or { };
            in
            builtins.ceil ((timeouts.drainDelay or 0) + (timeouts.shutdown or 30)) + 15;
          # Two descriptors per open stream; set here because the system call
          # filter refuses setrlimit().
          LimitNOFILE = 524288;
          # /run/llmhop, and llmhop's own directory in the socket root beside
          # the workers' (unix:<socketDirectory>/llmhop/http.sock, say), both
          # created on start and removed on stop.
          RuntimeDirectory = [
            "llmhop"
            (llmhopLib.socketRuntimeDirectory config "llmhop")
          ];
          RuntimeDirectoryMode = "0755";
          SupplementaryGroups = socketGroups;
          EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
          LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;
        };
      };
    })
  ];
}
