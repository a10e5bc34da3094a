"""A Python environment where this repository is not installed, for checking that registered
models are self-contained: a new virtual environment that sees the project venv's packages
(through a .pth line) but not its editable install of `ml` and `orchestration` (a .pth file of
the project venv, which is not processed from there). What a shop's serving machine, or the
image `mlflow models build-docker` makes from the model's requirements, would have.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
import urllib.request
from pathlib import Path

# Runs inside the fresh environment: loads each model, predicts on its own input example, and
# lists the distributions that loading and predicting imported.
_LOAD_AND_PREDICT = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, json, sys
    import mlflow
    import pandas as pd

    assert importlib.util.find_spec("ml") is None, "the repository is importable here"
    results = {}
    for uri in sys.argv[1:]:
        model = mlflow.pyfunc.load_model(uri)
        output = model.predict(model.input_example)
        results[uri] = pd.DataFrame(output).to_json(orient="split", double_precision=15)
    distributions = importlib.metadata.packages_distributions()
    top_level = {name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names)
    imported = sorted({d for name in top_level for d in distributions.get(name, [])})
    print(json.dumps({"predictions": results, "imported": imported}))
    """
)


# Runs in the project's environment (this repository installed): every registered version
# with its requirements, its predictions on its input example, and the champion's serving
# input and predictions. In a subprocess: MLflow's tracking URI is process state (and
# set_tracking_uri writes the environment), which a test must not change for later tests.
_REGISTRY_HERE = textwrap.dedent(
    """
    import json, pathlib
    import mlflow
    import numpy as np
    import pandas as pd

    client = mlflow.MlflowClient()
    versions, predictions = {}, {}
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            uri = f"models:/{model.name}/{version.version}"
            path = mlflow.pyfunc.get_model_dependencies(uri)
            versions[uri] = pathlib.Path(path).read_text().split()
            loaded = mlflow.pyfunc.load_model(uri)
            output = loaded.predict(loaded.input_example)
            predictions[uri] = pd.DataFrame(output).to_json(orient="split", double_precision=15)
    champion = "models:/purchase-propensity@champion"
    serving_input = pathlib.Path(
        mlflow.artifacts.download_artifacts(f"{champion}/serving_input_example.json")
    ).read_text()
    loaded = mlflow.pyfunc.load_model(champion)
    scores = np.asarray(loaded.predict(loaded.input_example), dtype=float).ravel().tolist()
    print(json.dumps({
        "versions": versions,
        "predictions": predictions,
        "champion_requirements": pathlib.Path(
            mlflow.pyfunc.get_model_dependencies(champion)
        ).read_text().split(),
        "serving_input": serving_input,
        "champion_scores": scores,
    }))
    """
)


def registry_here(tracking_uri: str) -> dict:
    """What _REGISTRY_HERE prints, for the registry at `tracking_uri`."""
    result = subprocess.run(
        [sys.executable, "-c", _REGISTRY_HERE],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def fresh_python(folder: Path, requirements: list[str]) -> Path:
    """The interpreter of a new venv under `folder` holding exactly what `requirements`
    install (each and, transitively, what it requires, as installed in the project venv, linked
    rather than copied): `pip install -r requirements.txt` without a network. The repository
    itself is not among them."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    project_site = Path(sysconfig.get_paths()["purelib"])
    for name in requirement_closure(requirements):
        for entry in distribution_entries(name):
            if (project_site / entry).exists() and not (site / entry).exists():
                (site / entry).symlink_to(project_site / entry)
        write_console_scripts(name, python)
    return python


def write_console_scripts(name: str, python: Path) -> None:
    """The distribution's commands in the venv's bin/, as pip writes them (`mlflow models
    serve` runs `uvicorn` from PATH)."""
    import importlib.metadata

    for entry_point in importlib.metadata.distribution(name).entry_points:
        if entry_point.group != "console_scripts":
            continue
        module, _, attribute = entry_point.value.partition(":")
        script = python.parent / entry_point.name
        script.write_text(
            f"#!{python}\nimport sys\nfrom {module} import {attribute.split('.')[0]}\n"
            f"sys.exit({attribute}())\n"
        )
        script.chmod(0o755)


def distribution_entries(name: str) -> set[str]:
    """The top-level files and folders of site-packages that an installed distribution owns
    (its packages, modules, shared-library folders and dist-info)."""
    import importlib.metadata

    files = importlib.metadata.files(name) or []
    return {f.parts[0] for f in files if f.parts and f.parts[0] not in ("..", "__pycache__")}


def clean_env(python: Path, tracking_uri: str) -> dict[str, str]:
    """The venv's commands first, no PYTHONPATH (the repository stays out), the registry named
    explicitly."""
    return {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "HOME": str(python.parent.parent),
    }


def load_and_predict(python: Path, uris: list[str], tracking_uri: str, cwd: Path) -> dict:
    """{"predictions": {uri: output as split JSON}, "imported": [distributions]} from the fresh
    environment, run from `cwd` (outside the repository)."""
    result = subprocess.run(
        [str(python), "-c", _LOAD_AND_PREDICT, *uris],
        cwd=cwd,
        env=clean_env(python, tracking_uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def requirement_closure(requirements: list[str]) -> set[str]:
    """The distributions a set of requirements installs: each one and, transitively, what it
    requires on this platform without extras (normalised names)."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    queue = [Requirement(line).name for line in requirements]
    while queue:
        name = canonicalize_name(queue.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in needs:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(requirement.name)
    return seen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_and_invoke(
    python: Path, model_uri: str, serving_input: str, tracking_uri: str, cwd: Path
) -> str:
    """`mlflow models serve` on `model_uri` in the fresh environment (local env manager,
    127.0.0.1), one POST /invocations with `serving_input`; the response body."""
    port = free_port()
    server = subprocess.Popen(
        [str(python), "-m", "mlflow", "models", "serve", "-m", model_uri]
        + ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
        cwd=cwd,
        env=clean_env(python, tracking_uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=serving_input.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def check_registered_models_are_self_contained(tracking_uri: str, work: Path) -> int:
    """Every version of every registered model loads and predicts on its input example, in an
    environment holding only its own requirements, as in the project's environment; `mlflow
    models serve` serves the champion there. Returns the number of versions checked."""
    import numpy as np
    import pandas as pd

    here = registry_here(tracking_uri)
    by_requirements: dict[tuple[str, ...], list[str]] = {}
    for uri, requirements in here["versions"].items():
        by_requirements.setdefault(tuple(requirements), []).append(uri)
    for index, (requirements, uris) in enumerate(sorted(by_requirements.items())):
        python = fresh_python(work / f"env{index}", list(requirements))
        result = load_and_predict(python, uris, tracking_uri, work)
        for uri in uris:
            # The same numbers up to float rounding (threaded sums may differ in the last bits).
            there = pd.read_json(io.StringIO(result["predictions"][uri]), orient="split")
            mine = pd.read_json(io.StringIO(here["predictions"][uri]), orient="split")
            pd.testing.assert_frame_equal(there, mine, check_exact=False, rtol=1e-6, obj=uri)
        assert "shopper-propensity" not in result["imported"]
        if list(requirements) == here["champion_requirements"]:
            champion = "models:/purchase-propensity@champion"
            served = json.loads(
                serve_and_invoke(python, champion, here["serving_input"], tracking_uri, work)
            )["predictions"]
            served_scores = np.asarray(served, dtype=float).ravel()
            assert np.allclose(served_scores, here["champion_scores"], rtol=1e-6)
    return len(here["versions"])
