# Evaluates services.llmhop with nixpkgs' lib and quadlet-nix's NixOS module
# (no nixpkgs needed) and checks what it renders. Run from the repository:
#
#   nix-instantiate --eval --strict --read-write-mode nix/tests/eval.nix \
#     --arg lib /path/to/nixpkgs.lib --arg quadlet-nix /path/to/quadlet-nix
#
# `lib` may be nixpkgs' lib itself, or a path to a nixpkgs or nixpkgs.lib
# checkout; `quadlet-nix` a path to its checkout or its flake. The result
# names the checks that passed (a failed check throws with its name) and holds
# the sample's rendered llmhop config, for `llmhop --check --no-secrets`
# (`-A renderedConfig --json`).
{
  lib,
  quadlet-nix,
  # The systemd version units are rendered for in `renderedUnits` (the host's,
  # for systemd-analyze); the checks use the stand-in's, 257.
  systemdVersion ? null,
}@inputs:
let
  # These shadow the arguments: from here on, lib is nixpkgs' lib itself.
  inherit (import ./inputs.nix { inherit (inputs) lib quadlet-nix; }) lib quadletModule;
  inherit (lib) hasInfix hasPrefix;
  pkgs = import ./stub-pkgs.nix { inherit lib; };

  evalWith =
    extraModules: config:
    (lib.evalModules {
      modules = [
        ./stub-options.nix
        ../module.nix
        { _module.args.pkgs = pkgs; }
        config
      ]
      ++ extraModules;
    }).config;
  eval = evalWith [
    quadletModule
    ../quadlet.nix
  ];

  secretPaths = [
    "/run/secrets/llmhop.env"
    "/run/secrets/client-token"
    "/run/secrets/huggingface.env"
  ];

  sample = eval sampleConfig;
  sampleConfig = {
    services.llmhop = {
      enable = true;
      host = "0.0.0.0";
      openFirewall = true;
      environmentFile = "/run/secrets/llmhop.env";
      credentials.client_token = "/run/secrets/client-token";
      settings = {
        authTokens = [ "\${file:client_token}" ];
        metrics.listen = "127.0.0.1:9108";
        models."gpt-4o" = {
          url = "https://api.openai.com";
          headers.Authorization = "Bearer \${env:OPENAI_API_KEY}";
        };
        models."openrouter/*" = {
          url = "https://openrouter.ai/api";
          stripPrefix = true;
        };
        models.replicated = {
          url = [
            "http://10.0.0.5:8000"
            "unix:/run/vllm/qwen.sock:/v1-prefix"
          ];
          model = "Qwen/Qwen3-32B";
          maxConcurrentRequests = 8;
        };
      };
      llama-cpp = {
        enable = true;
        environmentFile = "/run/secrets/huggingface.env";
        modelSettings.n-gpu-layers = 999;
        models."gemma-3-1b" = {
          port = 30001;
          settings.hf-repo = "ggml-org/gemma-3-1b-it-GGUF";
        };
        models."qwen3:0.6b" = {
          port = 30002;
          settings = {
            hf-repo = "Qwen/Qwen3-0.6B-GGUF";
            flash-attn = true;
          };
        };
      };
      sglang-quadlet = {
        enable = true;
        environmentFile = "/run/secrets/huggingface.env";
        models."Qwen/Qwen3-8B".port = 30010;
      };
      vllm-quadlet = {
        enable = true;
        tag = "v0.11.0";
        modelSettings.gpu-memory-utilization = 0.45;
        models."llama-3.1-8b" = {
          port = 30020;
          model = "meta-llama/Llama-3.1-8B-Instruct";
          settings.max-model-len = 16384;
          route.maxConcurrentRequests = 4;
        };
        models."mistral-7b" = {
          port = 30021;
          model = "mistralai/Mistral-7B-Instruct-v0.3";
          route.healthCheck = false;
        };
        models.switched-off = {
          enable = false;
          port = 30022;
        };
      };
    };
  };

  cfg = sample.services.llmhop;
  rendered = cfg.renderedSettings;
  renderedJson = builtins.toJSON rendered;
  services = sample.systemd.services;
  llmhop = services.llmhop.serviceConfig;
  llama = services."llama-cpp-gemma-3-1b";
  quadlet = kind: name: cfg."${kind}-quadlet".containers.${name}._configText;

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  clash = eval {
    services.llmhop = {
      enable = true;
      port = 30001;
      settings.models."gemma-3-1b".url = "http://127.0.0.1:9";
      llama-cpp = {
        enable = true;
        models."gemma-3-1b".port = 30001;
        models."a/b".port = 30003;
        models."a-b" = {
          port = 30003;
          route.url = "http://127.0.0.1:9";
        };
      };
    };
  };
  clashMessages = lib.concatStringsSep "\n" (failedAssertions clash);
  # The port registry: llmhop's listen list and metrics address, and every kind.
  portRegistry = eval {
    services.llmhop = {
      enable = true;
      settings.listen = [
        "127.0.0.1:30004"
        "unix:/run/llmhop/llmhop.sock"
      ];
      settings.metrics.listen = "127.0.0.1:30005";
      llama-cpp = {
        enable = true;
        models.a.port = 30004;
      };
      vllm = {
        enable = true;
        models.b.port = 30005;
        models.c.port = 30006;
      };
      sglang-quadlet = {
        enable = true;
        models.d.port = 30006;
        models.e.port = 8080; # llmhop's port, but not where it listens here
      };
    };
  };
  registryMessages = lib.concatStringsSep "\n" (failedAssertions portRegistry);

  fromStore = eval {
    services.llmhop.sglang-quadlet = {
      enable = true;
      package = pkgs.writeText "sglang-image.tar.gz" "";
      models.m.port = 30040;
    };
  };

  # The native twins of the containers, with llama.cpp before them.
  native = eval nativeConfig;
  nativeConfig = {
    services.llmhop = {
      enable = true;
      llama-cpp = {
        enable = true;
        models.tiny.port = 30001;
        models.sock = { }; # no port: a unix socket
      };
      sglang = {
        enable = true;
        package = pkgs.writeText "sglang-env" "";
        models."Qwen/Qwen3-8B".port = 30010;
      };
      vllm = {
        enable = true;
        environmentFile = "/run/secrets/huggingface.env";
        modelSettings.enforce-eager = true;
        models."llama-3.1-8b" = {
          port = 30020;
          model = "meta-llama/Llama-3.1-8B-Instruct";
          settings.max-model-len = 16384;
        };
        models."mistral-7b" = {
          port = 30021;
          package = pkgs.writeText "vllm-0.12" "";
        };
        models.uds = { };
      };
    };
  };
  nativeRendered = native.services.llmhop.renderedSettings;
  # The same on systemd 256, which does not know PrivateUsers=identity.
  nativeOnOlderSystemd = evalWith [
    quadletModule
    ../quadlet.nix
    { systemd.package = lib.mkForce (pkgs.systemd // { version = "256.8"; }); }
  ] nativeConfig;
  nativeUnits = native.systemd.services;
  nativeVllm = nativeUnits."vllm-llama-3.1-8b";
  nativeSglang = nativeUnits."sglang-Qwen-Qwen3-8B";
  twins = eval {
    services.llmhop = {
      enable = true;
      vllm = {
        enable = true;
        models.a.port = 30020;
      };
      vllm-quadlet = {
        enable = true;
        models.b.port = 30021;
      };
      sglang = {
        enable = true;
        models.c.port = 30010;
        models.socketless = { };
      };
      sglang-quadlet = {
        enable = true;
        models.in-a-container = { };
      };
      llama-cpp = {
        enable = true;
        models.l.port = 30001;
      };
      llama-cpp-quadlet = {
        enable = true;
        subUidStart = 2200000000; # vllm-quadlet's
        models.l2.port = 30002;
      };
    };
  };

  llamaQuadlet = eval {
    services.llmhop = {
      enable = true;
      llama-cpp-quadlet = {
        enable = true;
        models.gemma = {
          port = 30001;
          model = "ggml-org/gemma-3-1b-it-GGUF";
        };
        models.other = {
          port = 30002;
          settings.hf-repo = "Qwen/Qwen3-0.6B-GGUF";
        };
      };
      vllm-quadlet = {
        enable = true;
        models.v.port = 30020;
      };
    };
  };
  llamaContainer = name: llamaQuadlet.services.llmhop.llama-cpp-quadlet.containers.${name}._configText;

  # nixosModules.default: the native workers, with no quadlet-nix at all.
  plain = evalWith [ ] {
    services.llmhop = {
      enable = true;
      vllm = {
        enable = true;
        models.m.port = 30020;
      };
    };
  };

  withoutQuadlet = evalWith [ ../quadlet.nix ] {
    services.llmhop.vllm-quadlet = {
      enable = true;
      models.m.port = 30030;
    };
  };

  # The flake's outputs, with these stand-ins for nixpkgs.
  flake =
    let
      outputs = import ../default.nix {
        self = outputs;
        nixpkgs = {
          inherit lib;
          legacyPackages = lib.genAttrs [
            "x86_64-linux"
            "aarch64-linux"
            "x86_64-darwin"
            "aarch64-darwin"
          ] (
            system:
            pkgs
            // {
              stdenv.hostPlatform = {
                inherit system;
                isLinux = lib.hasSuffix "-linux" system;
              };
            }
          );
        };
        quadlet-nix.nixosModules.quadlet = quadletModule;
      };
    in
    outputs;
  flakePackage = flake.packages.x86_64-linux.default;

  hardened = unitConfig: keys: lib.all (key: unitConfig ? ${key}) keys;

  draining = eval {
    services.llmhop = {
      enable = true;
      settings.timeouts = {
        drainDelay = 10;
        shutdown = 60.5;
      };
      settings.models.m.url = "http://127.0.0.1:9";
    };
  };

  # SPEC §7 in settings: several listeners, scoped tokens, CORS.
  surface = eval {
    services.llmhop = {
      enable = true;
      settings = {
        listen = [
          "127.0.0.1:8080"
          "unix:/run/llmhop/llmhop.sock"
        ];
        authTokens = [
          "\${file:admin}"
          {
            token = "\${file:team-a}";
            name = "team-a";
            models = [ "qwen/*" ];
          }
        ];
        cors.allowOrigins = [ "https://chat.example" ];
        models.m.url = "http://127.0.0.1:9";
        models.fleet = fleetRoute;
        models.all-defaults = {
          url = "http://127.0.0.1:11";
          healthCheck = { };
        };
      };
    };
  };
  fleetRoute = {
    url = [
      "http://127.0.0.1:9"
      "http://127.0.0.1:10"
    ];
    retryOn = [ ];
    fallbacks = [ "m" ];
    policy = "prefix-affinity";
    healthCheck = {
      interval = 0.5;
      failures = 3;
    };
  };
  surfaceRendered = surface.services.llmhop.renderedSettings;
  surfaceTwo = eval {
    services.llmhop = {
      enable = true;
      settings = {
        workers = 2;
        models.m.url = "http://127.0.0.1:9";
      };
    };
  };

  checks = {
    "a listen list, scoped tokens and cors render as written" =
      surfaceRendered.listen == [
        "127.0.0.1:8080"
        "unix:/run/llmhop/llmhop.sock"
      ]
      && (lib.elemAt surfaceRendered.authTokens 1).models == [ "qwen/*" ]
      && surfaceRendered.cors.allowOrigins == [ "https://chat.example" ];

    "retries, fallbacks, policy and health checks render as llmhop reads them" =
      # Rendered as written: `retryOn = [ ]` kept, the check's unset fields left out.
      surfaceRendered.models.fleet == fleetRoute
      && (surfaceRendered.models.all-defaults.healthCheck or null) == true
      && surfaceRendered.models.m == { url = "http://127.0.0.1:9"; }
      && !(surfaceTwo.services.llmhop.renderedSettings ? cors);

    "worker routes are health-checked unless their route says otherwise" =
      (rendered.models."gemma-3-1b".healthCheck or null) == true
      && (rendered.models."Qwen/Qwen3-8B".healthCheck or null) == true
      && (rendered.models."mistral-7b".healthCheck or null) == false
      && !(rendered.models."gpt-4o" ? healthCheck);

    "native vLLM and SGLang units run the server under llmhop-notify on loopback" =
      hasPrefix "${cfg.package}/bin/llmhop-notify --port 30020 -- /nix/store/00000000000000000000000000000000-vllm/bin/vllm serve meta-llama/Llama-3.1-8B-Instruct --served-model-name llama-3.1-8b --enforce-eager --max-model-len 16384 " nativeVllm.serviceConfig.ExecStart
      && lib.hasSuffix " --host 127.0.0.1 --port 30020" nativeVllm.serviceConfig.ExecStart
      && hasInfix "-vllm-0.12/bin/vllm serve mistral-7b --served-model-name mistral-7b " nativeUnits."vllm-mistral-7b".serviceConfig.ExecStart
      && hasInfix "-sglang-env/bin/python3 -m sglang.launch_server --model-path Qwen/Qwen3-8B --served-model-name Qwen/Qwen3-8B --host 127.0.0.1 --port 30010" nativeSglang.serviceConfig.ExecStart
      && native.services.llmhop.renderedSettings.models."llama-3.1-8b" == {
        url = "http://127.0.0.1:30020";
        healthCheck = true;
      };

    "native vLLM and SGLang units are hardened, reach the GPU and run as a real user" =
      lib.all (
        unit:
        let
          c = unit.serviceConfig;
        in
        c.Type == "notify"
        && c.NotifyAccess == "main"
        && c.KillMode == "mixed"
        && c.Restart == "always"
        && unit.startLimitBurst == 3
        && !c.DynamicUser
        && c.NoNewPrivileges
        && c.ProtectSystem == "strict"
        && c.ProtectHome
        && c.CapabilityBoundingSet == ""
        && !c.PrivateDevices
        && c.PrivateUsers == "identity"
        && c.LimitMEMLOCK == "infinity"
        && c.ProcSubset == "all"
        && lib.elem "render" c.SupplementaryGroups
        && lib.elem "AF_NETLINK" c.RestrictAddressFamilies
        && c.CacheDirectory == c.User
        && unit.environment.HOME == "/var/cache/${c.User}"
        && unit.environment.NCCL_SOCKET_IFNAME == "lo"
        && lib.any (p: p.name or "" == "gcc") unit.path
      ) [ nativeVllm nativeSglang ]
      && nativeVllm.serviceConfig.User == "vllm"
      && nativeVllm.serviceConfig.EnvironmentFile == [ "/run/secrets/huggingface.env" ]
      && native.users.users.vllm.isSystemUser
      && native.users.users.sglang.group == "sglang";

    "GPU workers keep their groups: PrivateUsers=identity from systemd 257, none before" =
      nativeVllm.serviceConfig.PrivateUsers == "identity"
      && nativeUnits.llama-cpp-tiny.serviceConfig.PrivateUsers == "identity"
      && nativeOnOlderSystemd.systemd.services."vllm-llama-3.1-8b".serviceConfig.PrivateUsers == false
      && nativeOnOlderSystemd.systemd.services.llama-cpp-tiny.serviceConfig.PrivateUsers == false
      && nativeOnOlderSystemd.systemd.services.llmhop.serviceConfig.PrivateUsers == true;

    "native workers start one after another, after the kinds before them" =
      lib.elem "vllm-llama-3.1-8b.service" nativeUnits."vllm-mistral-7b".after
      && !(lib.elem "vllm-mistral-7b.service" nativeVllm.after)
      && lib.elem "sglang-Qwen-Qwen3-8B.service" nativeVllm.after
      && lib.elem "llama-cpp-tiny.service" nativeVllm.after
      && lib.elem "llama-cpp-tiny.service" nativeSglang.after;

    "a kind and its quadlet twin cannot both run, and SGLang needs a package" =
      let
        messages = failedAssertions twins;
      in
      lib.any (hasInfix "services.llmhop.vllm and services.llmhop.vllm-quadlet both run units") messages
      && lib.any (hasInfix "services.llmhop.sglang.package: set it") messages
      && failedAssertions native == [ ];

    "a worker without a port serves on a unix socket of its own, which llmhop joins the group of" =
      let
        llamaSock = nativeUnits.llama-cpp-sock.serviceConfig;
        vllmSock = nativeUnits.vllm-uds.serviceConfig;
        router = native.systemd.services.llmhop.serviceConfig;
      in
      nativeRendered.models.sock.url == "unix:/run/llmhop-workers/llama-cpp-sock/http.sock"
      && nativeRendered.models.uds.url == "unix:/run/llmhop-workers/vllm-uds/http.sock"
      && hasInfix "/bin/llmhop-notify --socket /run/llmhop-workers/llama-cpp-sock/http.sock -- " llamaSock.ExecStart
      && lib.hasSuffix " --host /run/llmhop-workers/llama-cpp-sock/http.sock" llamaSock.ExecStart
      && !(hasInfix "--port" llamaSock.ExecStart)
      && lib.hasSuffix " --uds /run/llmhop-workers/vllm-uds/http.sock" vllmSock.ExecStart
      && llamaSock.RuntimeDirectory == "llmhop-workers/llama-cpp-sock"
      && llamaSock.RuntimeDirectoryMode == "0710"
      && llamaSock.UMask == "0007"
      && vllmSock.Group == "vllm"
      && vllmSock.UMask == "0007"
      && nativeUnits.llama-cpp-tiny.serviceConfig.UMask == "0077"
      && !(nativeUnits.llama-cpp-tiny.serviceConfig ? RuntimeDirectory)
      && (router.SupplementaryGroups or [ ]) == [
        "llama-cpp"
        "vllm"
      ]
      && native.users.groups ? llama-cpp
      && lib.elem "d /run/llmhop-workers 0711 root root - -" native.systemd.tmpfiles.rules
      && (llmhop.SupplementaryGroups or [ ]) == [ ];

    "SGLang and container workers need a port" =
      let
        messages = failedAssertions twins;
      in
      lib.any (hasInfix "SGLang cannot listen on a unix socket; give these a port: socketless") messages
      && lib.any (hasInfix "sglang-quadlet.models: containers are reached on a loopback port; give each a port: in-a-container") messages;

    "llama.cpp containers run llama-server with its alias, a curl health check and its own cache" =
      let
        gemma = llamaContainer "llama-cpp-gemma";
        other = llamaContainer "llama-cpp-other";
      in
      hasInfix "Image=ghcr.io/ggml-org/llama.cpp:server" gemma
      && hasInfix "Entrypoint=/app/llama-server" gemma
      && hasInfix "--alias gemma --hf-repo ggml-org/gemma-3-1b-it-GGUF --host 0.0.0.0 --port 30001" gemma
      && hasInfix "--alias other --hf-repo Qwen/Qwen3-0.6B-GGUF --host 0.0.0.0 --port 30002" other
      && hasInfix "HealthCmd=curl -fsS -o /dev/null http://127.0.0.1:30001/health" gemma
      && hasInfix "Volume=/var/cache/llama-cpp:/root/.cache/llama.cpp" gemma
      && hasInfix "LLAMA_CACHE=/root/.cache/llama.cpp" gemma
      && !(hasInfix "HF_HOME" gemma)
      && hasInfix "After=llama-cpp-gemma.service" other
      && lib.elem "llama-cpp-models.service" llamaQuadlet.systemd.services.vllm-models.after
      && llamaQuadlet.users.users.llama-cpp.linger
      && llamaQuadlet.services.llmhop.renderedSettings.models.gemma.url == "http://127.0.0.1:30001";

    "container workers always restart, within a start limit" =
      lib.all (
        text: hasInfix "Restart=always" text && hasInfix "StartLimitBurst=3" text && hasInfix "StartLimitIntervalSec=3600" text
      ) [
        (quadlet "vllm" "vllm-llama-3.1-8b")
        (llamaContainer "llama-cpp-gemma")
      ];

    "llama.cpp and its container twin cannot both run; container sub-UID ranges stay apart" =
      let
        messages = failedAssertions twins;
      in
      lib.any (hasInfix "services.llmhop.llama-cpp and services.llmhop.llama-cpp-quadlet both run units") messages
      && lib.any (hasInfix "services.llmhop.llama-cpp-quadlet and services.llmhop.vllm-quadlet: their sub-UID ranges overlap") messages
      && failedAssertions llamaQuadlet == [ ];

    "router processes default to one per CPU, and a number is kept" =
      rendered.workers == "auto" && surfaceTwo.services.llmhop.renderedSettings.workers == 2;

    "the stop timeout covers the drain delay and the shutdown grace" =
      llmhop.TimeoutStopSec == 45
      && draining.systemd.services.llmhop.serviceConfig.TimeoutStopSec == 86;

    "every worker model is routed to its loopback port" =
      rendered.models."gemma-3-1b".url == "http://127.0.0.1:30001"
      && rendered.models."qwen3:0.6b".url == "http://127.0.0.1:30002"
      && rendered.models."Qwen/Qwen3-8B".url == "http://127.0.0.1:30010"
      && rendered.models."llama-3.1-8b".url == "http://127.0.0.1:30020"
      && rendered.models."mistral-7b".url == "http://127.0.0.1:30021";

    "a disabled model is neither routed nor run" =
      !(rendered.models ? switched-off) && !(cfg.vllm-quadlet.containers ? vllm-switched-off);

    "settings.models are kept beside the workers' routes" =
      rendered.models."gpt-4o" == {
        url = "https://api.openai.com";
        headers.Authorization = "Bearer \${env:OPENAI_API_KEY}";
      }
      && lib.length (lib.attrNames rendered.models) == 8;

    "replicas, aliases, prefix routes, limits and metrics render as llmhop reads them" =
      rendered.models.replicated == {
        url = [
          "http://10.0.0.5:8000"
          "unix:/run/vllm/qwen.sock:/v1-prefix"
        ];
        model = "Qwen/Qwen3-32B";
        maxConcurrentRequests = 8;
      }
      && rendered.models."openrouter/*" == {
        url = "https://openrouter.ai/api";
        stripPrefix = true;
      }
      && rendered.metrics == {
        listen = "127.0.0.1:9108";
      }
      && rendered.models."llama-3.1-8b" == {
        url = "http://127.0.0.1:30020";
        maxConcurrentRequests = 4;
        healthCheck = true;
      };

    "listen is made from host and port" = rendered.listen == "0.0.0.0:8080";

    "llmhop may listen in /run/llmhop or in its own directory of the socket root" =
      llmhop.RuntimeDirectory == [
        "llmhop"
        "llmhop-workers/llmhop"
      ];

    "unset optional keys are left to llmhop's defaults" =
      !(rendered ? maxBodyBytes) && !(rendered.models."llama-3.1-8b" ? headers);

    "secrets never appear in the rendered config, only references" =
      rendered.authTokens == [ "\${file:client_token}" ]
      && lib.all (path: !(hasInfix path renderedJson)) secretPaths
      && !(hasInfix "/run/secrets" renderedJson);

    "the config is checked at build time without secrets" =
      hasInfix "llmhop --check --no-secrets --config" cfg.configFile.script;

    "llmhop runs Type=notify with reload by SIGHUP" =
      llmhop.Type == "notify"
      && hasInfix "kill -HUP $MAINPID" llmhop.ExecReload
      && llmhop.Restart == "on-failure"
      && services.llmhop.reloadTriggers == [ cfg.configFile ]
      && hasInfix "--config /etc/llmhop/config.json" llmhop.ExecStart
      && sample.environment.etc."llmhop/config.json".source == cfg.configFile;

    "llmhop carries the full hardening" =
      hardened llmhop [
        "ProtectHome"
        "PrivateTmp"
        "PrivateDevices"
        "PrivateUsers"
        "ProtectKernelTunables"
        "ProtectKernelModules"
        "ProtectKernelLogs"
        "ProtectControlGroups"
        "RestrictNamespaces"
        "NoNewPrivileges"
        "LockPersonality"
      ]
      && llmhop.DynamicUser
      && llmhop.ProtectSystem == "strict"
      && llmhop.ProtectProc == "invisible"
      && llmhop.UMask == "0077"
      && llmhop.CapabilityBoundingSet == ""
      && llmhop.RestrictAddressFamilies == [
        "AF_INET"
        "AF_INET6"
        "AF_UNIX"
      ]
      && llmhop.SystemCallFilter == [
        "@system-service"
        "~@privileged"
        "~@resources"
      ];

    "secrets reach llmhop through LoadCredential= and EnvironmentFile=" =
      llmhop.LoadCredential == [ "client_token:/run/secrets/client-token" ]
      && llmhop.EnvironmentFile == [ "/run/secrets/llmhop.env" ];

    "the firewall opens llmhop's port" = sample.networking.firewall.allowedTCPPorts == [ 8080 ];

    "llama.cpp models are hardened native units with GPU access" =
      llama.serviceConfig.DynamicUser
      && llama.serviceConfig.ProtectSystem == "strict"
      && llama.serviceConfig.PrivateUsers == "identity"
      && llama.serviceConfig.NoNewPrivileges
      && !llama.serviceConfig.PrivateDevices
      && llama.serviceConfig.SupplementaryGroups == [
        "video"
        "render"
      ]
      && llama.serviceConfig.CacheDirectory == "llama-cpp"
      && llama.serviceConfig.StateDirectory == "llama-cpp"
      && llama.serviceConfig.EnvironmentFile == [ "/run/secrets/huggingface.env" ];

    "llama.cpp command lines carry the settings, alias, loopback host and port" =
      lib.hasSuffix " -- /nix/store/00000000000000000000000000000000-llama-cpp/bin/llama-server --alias gemma-3-1b --hf-repo ggml-org/gemma-3-1b-it-GGUF --n-gpu-layers 999 --host 127.0.0.1 --port 30001" llama.serviceConfig.ExecStart
      && hasInfix "--flash-attn" services."llama-cpp-qwen3-0.6b".serviceConfig.ExecStart;

    "llama.cpp units are ready once their model answers: llmhop-notify, Type=notify" =
      hasPrefix "${cfg.package}/bin/llmhop-notify --port 30001 -- " llama.serviceConfig.ExecStart
      && llama.serviceConfig.Type == "notify"
      && llama.serviceConfig.NotifyAccess == "main"
      && llama.serviceConfig.KillMode == "mixed"
      && !(llama.serviceConfig ? ExecStartPost);

    "llama.cpp units always restart, within a start limit" =
      llama.serviceConfig.Restart == "always"
      && llama.startLimitBurst == 3
      && llama.startLimitIntervalSec == 3600;

    "llama.cpp models start one after another" =
      lib.elem "llama-cpp-gemma-3-1b.service" services."llama-cpp-qwen3-0.6b".after
      && !(lib.any (hasPrefix "llama-cpp-") llama.after);

    "sglang and vLLM containers are rendered by quadlet-nix with a health-gated start" =
      let
        s = quadlet "sglang" "sglang-Qwen-Qwen3-8B";
        v = quadlet "vllm" "vllm-llama-3.1-8b";
      in
      hasInfix "Image=docker.io/lmsysorg/sglang:latest" s
      && hasInfix "Image=docker.io/vllm/vllm-openai:v0.11.0" v
      && hasInfix "Notify=healthy" v
      && hasInfix "HealthCmd=" v
      && hasInfix "http://127.0.0.1:30020/health" v
      && hasInfix "PublishPort=127.0.0.1:30020:30020" v
      && hasInfix "AddDevice=nvidia.com/gpu=all" v
      && hasInfix "Volume=/var/cache/vllm:/root/.cache/huggingface" v
      && hasInfix "EnvironmentFile=/run/secrets/huggingface.env" s
      && hasInfix "ShmSize=16g" v
      && hasInfix "Entrypoint=vllm" v
      && hasInfix "serve meta-llama/Llama-3.1-8B-Instruct --served-model-name llama-3.1-8b --gpu-memory-utilization 0.450000 --max-model-len 16384 --host 0.0.0.0 --port 30020" v
      && hasInfix "-m sglang.launch_server --model-path Qwen/Qwen3-8B --served-model-name Qwen/Qwen3-8B" s;

    "an image built with Nix is loaded from the store" = hasInfix "Image=docker-archive:/nix/store/00000000000000000000000000000000-sglang-image.tar.gz" fromStore.services.llmhop.sglang-quadlet.containers.sglang-m._configText;

    "containers of one kind start one after another" =
      hasInfix "After=vllm-llama-3.1-8b.service" (quadlet "vllm" "vllm-mistral-7b")
      && !(hasInfix "After=" (quadlet "vllm" "vllm-llama-3.1-8b"));

    "kinds start in order: llama.cpp, then sglang, then vLLM" =
      lib.elem "llama-cpp-gemma-3-1b.service" services.sglang-models.after
      && lib.elem "llama-cpp-qwen3-0.6b.service" services.sglang-models.after
      && lib.elem "sglang-models.service" services.vllm-models.after;

    "the containers run as lingering sglang and vllm users with their own sub-UIDs" =
      let
        u = sample.users.users;
      in
      u.sglang.linger
      && u.vllm.linger
      && u.sglang.isSystemUser
      && u.vllm.home == "/var/lib/vllm"
      && u.sglang.subUidRanges == [
        {
          startUid = 2100000000;
          count = 65536;
        }
      ]
      && u.vllm.subGidRanges == [
        {
          startGid = 2200000000;
          count = 65536;
        }
      ]
      && sample.users.groups ? vllm
      && lib.elem "d /var/cache/vllm 0700 vllm vllm - -" sample.systemd.tmpfiles.rules;

    "the containers are user units of those users, managed by a system oneshot" =
      let
        apply = services.vllm-models.serviceConfig.ExecStart;
      in
      hasInfix "-vllm-models-apply/bin/vllm-models-apply" apply
      && services.vllm-models.reloadIfChanged
      && services.vllm-models.serviceConfig.Type == "oneshot"
      && sample.virtualisation.quadlet.enable
      && sample.virtualisation.podman.enable
      && !(sample.virtualisation.quadlet.containers ? "vllm-llama-3.1-8b");

    "the oneshot installs the units in the user's config and starts them there" =
      let
        apply = cfg.vllm-quadlet.scripts.apply.text;
      in
      hasInfix "ln -sfn /nix/store/00000000000000000000000000000000-vllm-quadlets /var/lib/vllm/.config/containers/systemd" apply
      && hasInfix "systemctl --user --machine=vllm@ daemon-reload" apply
      && hasInfix ''systemctl --user --machine=vllm@ start "$@" vllm-llama-3.1-8b.service vllm-mistral-7b.service'' apply
      && lib.hasSuffix "vllm-models-apply --no-block" services.vllm-models.serviceConfig.ExecReload
      && hasInfix "systemctl --user --machine=vllm@ stop vllm-llama-3.1-8b.service vllm-mistral-7b.service" cfg.vllm-quadlet.scripts.stop.text;

    "sglang-shell and vllm-shell open a shell as those users" =
      let
        shell = lib.findFirst (p: p.name or "" == "vllm-shell") null sample.environment.systemPackages;
      in
      shell != null
      && hasInfix "machinectl shell vllm@" shell.text
      && lib.any (p: p.name or "" == "sglang-shell") sample.environment.systemPackages;

    "all assertions hold for the sample" = failedAssertions sample == [ ];

    "a port used twice is caught" = hasInfix "ports used twice" clashMessages && hasInfix "30001" clashMessages && hasInfix "30003" clashMessages;

    "one port registry covers llmhop's listen list, its metrics address and every worker kind" =
      hasInfix "ports used twice (workers of every kind, llmhop's listen addresses and metrics.listen): 30004, 30005, 30006" registryMessages
      && !(hasInfix "8080" registryMessages);

    "a model name used twice is caught" = hasInfix "model names used twice" clashMessages && hasInfix "gemma-3-1b" clashMessages;

    "a worker's route cannot move its url" = hasInfix "cannot set `url`" clashMessages;

    "two names giving one unit name are caught" = hasInfix "same unit name: llama-cpp-a-b" clashMessages;

    "the flake packages llmhop from this checkout with twisted and attrs, treq for its tests only" =
      flakePackage.pname == "llmhop"
      && builtins.match "[0-9]+[.][0-9]+[.][0-9]+.*" flakePackage.version != null
      && lib.elem "twisted" (map (p: lib.removePrefix "python3-" p.name) flakePackage.dependencies)
      && !(lib.elem "treq" (map (p: lib.removePrefix "python3-" p.name) flakePackage.dependencies))
      && lib.elem "treq" (map (p: lib.removePrefix "python3-" p.name) flakePackage.nativeCheckInputs)
      && lib.elem "attrs" (map (p: lib.removePrefix "python3-" p.name) flakePackage.dependencies)
      && builtins.pathExists "${flakePackage.src}/llmhop/__init__.py"
      && builtins.pathExists "${flakePackage.src}/twisted/plugins/llmhop_plugin.py"
      && !(builtins.pathExists "${flakePackage.src}/bench");

    "the flake has an app, an overlay and the NixOS modules" =
      flake.apps.x86_64-linux.default.program == "${flakePackage}/bin/llmhop"
      && (flake.overlays.default pkgs pkgs) ? llmhop
      && flake.nixosModules.default == ../module.nix
      && lib.elem ../quadlet.nix flake.nixosModules.quadlet.imports
      && lib.elem quadletModule flake.nixosModules.quadlet.imports
      && flake.nixosModules.containers == ../quadlet.nix;

    "the default module runs native workers without quadlet-nix or container options" =
      !(plain.services.llmhop ? vllm-quadlet)
      && !(plain ? virtualisation && plain.virtualisation ? quadlet)
      && plain.systemd.services ? vllm-m
      && failedAssertions plain == [ ];

    "the flake's checks hold the evaluation and a VM test routing through a worker" =
      flake.checks.x86_64-linux ? module-eval
      && hasInfix "llama-cpp-tiny.service" flake.checks.x86_64-linux.vm.testScript
      && !(flake.checks.x86_64-darwin ? vm);

    "sglang or vLLM without quadlet-nix is a clear assertion" = lib.any (hasInfix "import quadlet-nix's NixOS module") (
      failedAssertions withoutQuadlet
    );
  };

  failed = lib.attrNames (lib.filterAttrs (_: ok: !ok) checks);
in
if failed == [ ] then
  {
    passed = lib.attrNames checks;
    renderedConfig = rendered;
    # The router's own features set through typed options, for `llmhop --check` too.
    renderedSurfaceConfig = surfaceRendered;
    # Unit files for systemd-analyze (nix/tests/verify-units): llmhop with
    # llama.cpp and the container oneshots, the native workers (with sockets),
    # and llama.cpp's container oneshot.
    renderedUnits =
      let
        onHost = lib.optional (systemdVersion != null) {
          systemd.package = lib.mkForce (pkgs.systemd // { version = systemdVersion; });
        };
        render = config: import ./units.nix { inherit lib; } (evalWith ([ quadletModule ../quadlet.nix ] ++ onHost) config);
      in
      {
        sample = render sampleConfig;
        native = render nativeConfig;
      };
  }
else
  throw "nix/tests/eval.nix: failed: ${lib.concatStringsSep "; " failed}"
