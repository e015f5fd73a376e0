# llmhop built from this checkout with nixpkgs' Python packages.
{
  lib,
  python3Packages,
}:
let
  root = ../.;
  version = lib.head (
    builtins.match ''.*__version__ = "([^"]+)".*'' (builtins.readFile (root + "/llmhop/__init__.py"))
  );
in
python3Packages.buildPythonApplication {
  pname = "llmhop";
  inherit version;
  pyproject = true;

  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/llmhop")
      (root + "/twisted")
      (root + "/tests")
      (root + "/examples")
      (root + "/pyproject.toml")
      (root + "/setup.cfg")
      (root + "/README.md")
    ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies =
    with python3Packages;
    [
      twisted
      attrs
      prometheus-client
    ]
    ++ twisted.optional-dependencies.tls;

  # treq and h11 are the tests' HTTP client and strict parser; llmhop itself
  # does not import them (setup.cfg's `test` extra, as here).
  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    pytest-twisted
    hypothesis
    treq
    h11
  ];
  # The in-process suite; the end-to-end tests (processes, signals, twistd)
  # run in the repository's CI instead of the build sandbox.
  disabledTestPaths = [ "tests/e2e" ];

  pythonImportsCheck = [ "llmhop" ];

  postInstallCheck = ''
    $out/bin/llmhop --version
    $out/bin/llmhop --check --config examples/config.json
    $out/bin/llmhop-notify --help >/dev/null
  '';

  meta = {
    description = "One HTTP port in front of many OpenAI-compatible LLM inference servers, routed by model";
    license = lib.licenses.mit;
    mainProgram = "llmhop";
    platforms = lib.platforms.unix;
  };
}
