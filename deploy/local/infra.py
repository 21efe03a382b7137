"""Provision and run Muisti's real infrastructure on a machine without Docker.

Apache Kafka (KRaft, one combined broker+controller node) comes from Maven Central and runs on
the installed Java; FerretDB (MongoDB wire protocol over SQLite) is built with Go from the module
proxy. Both are cached under ``~/.cache/muisti`` (``CDP_CACHE_DIR``), so only the first start
downloads and builds anything.

An *instance* is a named pair of running servers with its own ports and run directory
(``.run/<name>``: data, logs, pid files); ``dev`` serves ``make run`` and ``test`` serves the
test suite, so tests can stop and restart their broker without disturbing a running demo.

When ``CDP_KAFKA_BOOTSTRAP`` or ``CDP_MONGO_URI`` is set, that part is the user's own and is
neither provisioned nor started.

Command line::

    python -m deploy.local.infra start|stop|status|env [--name dev|test]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.3.1"
FERRETDB_VERSION = "1.24.2"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("CDP_CACHE_DIR", Path.home() / ".cache" / "muisti"))

DEFAULT_PORTS = {
    # name: (kafka, kafka controller, mongo)
    "dev": (9092, 9093, 27017),
    "test": (19092, 19093, 27018),
    "bench": (39092, 39093, 27038),
}


_spawned: set[int] = set()  # pids this process started itself


class InfraError(RuntimeError):
    """A server could not be provisioned or did not become ready; the message says why."""


def _log(msg: str) -> None:
    print(f"[infra] {msg}", file=sys.stderr, flush=True)


# --- provisioning (download/build once, cached) ---------------------------------------------


def kafka_libs() -> Path:
    """Return the directory of the broker's jars, downloading them from Maven Central once."""
    libs = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    if not shutil.which("mvn") or not shutil.which("java"):
        raise InfraError("Kafka needs Java 17+ and Maven on PATH (apt-get install maven)")
    _log(f"downloading Apache Kafka {KAFKA_VERSION} jars from Maven Central (first run only)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=libs.parent, prefix="libs."))
    _run(
        [
            "mvn", "-q", "-B", "-f", str(HERE / "kafka" / "pom.xml"),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ],
        "Maven could not fetch the Kafka broker",
    )
    staging.rename(libs)  # atomic: a half-finished download never looks complete
    return libs


# Six changes to FerretDB 1.24, applied to its source before the build:
# - it looks documents up by _id with the expression `_ferretdb_sjson->'$._id'`, but creates
#   the _id index on `_ferretdb_sjson->"_id"`; SQLite uses an expression index only for the
#   same expression, so every find, update and delete by _id scanned the whole table (70 ms
#   per lookup at 50k documents, 0.5 ms with the fix);
# - it pushes `_id` equality down only when it is the filter's sole field, so a conditional
#   write such as {_id, version} scanned the table too. FerretDB's handler filters every
#   fetched document by the whole filter again, so narrowing by _id first is always safe;
# - it scans the table for `{_id: {$in: [...]}}`; ferretdb/sqlite_id_conditions.go.in answers
#   that from the _id index too, so a batch of documents is one round trip (services/common/
#   store.py find_by_ids), not one per document;
# - it scans the table for an _id range; the same file answers a prefix range (store.py
#   id_prefix) from the index, so a profile's access-log entries are read without a list of them;
# - its handler updates a document by reading it, changing it in Go and writing it back, with
#   nothing stopping a concurrent update of the same document in between: one of the changes
#   was lost (4 threads x 50 $addToSet on one document kept 62 of 200 values).
#   ferretdb/handler_update_lock.go.in serialises update and findAndModify per collection;
# - it tracks the lifetime of every cursor and iterator in a pprof profile, taking a stack
#   trace each time, to find leaks in its own tests: an eighth of its CPU per read. Tracking
#   is switched off (small find_one 0.59 -> 0.48 ms of FerretDB CPU; 0.40 with GOGC=400);
# - an update command kept every statement's read open, a pooled SQLite connection each,
#   until the whole command ended: three commands of 50 statements at once (identity,
#   profile and export workers) took more than the pool's 100 connections, and all of them
#   waited for one forever. Each statement's read is closed once its write is done.
FERRETDB_PATCHES = (
    ("internal/backends/sqlite/metadata/metadata.go",
     'IDColumn = DefaultColumn + "->\'$._id\'"',
     'IDColumn = DefaultColumn + `->"_id"`'),
    ("internal/backends/sqlite/collection.go",
     "if params.Filter.Len() == 1 {",
     "if params.Filter.Len() >= 1 {"),
    ("internal/backends/sqlite/collection.go",
     "\t\t\twhereClause = fmt.Sprintf(` WHERE %s = ?`, metadata.IDColumn)\n"
     "\t\t\targs = []any{string(must.NotFail(sjson.MarshalSingleValue(v)))}\n"
     "\t\t}\n",
     "\t\t\twhereClause = fmt.Sprintf(` WHERE %s = ?`, metadata.IDColumn)\n"
     "\t\t\targs = []any{string(must.NotFail(sjson.MarshalSingleValue(v)))}\n"
     "\t\tcase *types.Document:\n"
     "\t\t\twhereClause, args = idConditionWhereClause(v.(*types.Document))\n"
     "\t\t}\n"),
    ("internal/handler/msg_update.go",
     "*common.UpdateParams) (int32, int32, *types.Array, error) {\n",
     "*common.UpdateParams) (int32, int32, *types.Array, error) {\n"
     "\tdefer lockCollection(params.DB, params.Collection)()\n\n"),
    ("internal/handler/msg_update.go",
     '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n',
     '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n'
     "\t\tcloser.Close() // Muisti: release the read's connection before the next statement\n"),
    ("internal/handler/msg_findandmodify.go",
     "*common.FindAndModifyParams) (*findAndModifyResult, error) {\n",
     "*common.FindAndModifyParams) (*findAndModifyResult, error) {\n"
     "\tdefer lockCollection(params.DB, params.Collection)()\n\n"),
    ("internal/util/resource/resource.go",
     "func Track(obj any, token *Token) {\n\tcheckArgs(obj, token)\n",
     "func Track(obj any, token *Token) {\n\tcheckArgs(obj, token)\n\n\treturn // Muisti\n"),
    ("internal/util/resource/resource.go",
     "func Untrack(obj any, token *Token) {\n\tcheckArgs(obj, token)\n",
     "func Untrack(obj any, token *Token) {\n\tcheckArgs(obj, token)\n\n\treturn // Muisti\n"),
)
FERRETDB_ADDED_FILES = {
    "internal/backends/sqlite/muisti_id_conditions.go":
        HERE / "ferretdb" / "sqlite_id_conditions.go.in",
    "internal/handler/muisti_update_lock.go": HERE / "ferretdb" / "handler_update_lock.go.in",
}


def ferretdb_binary() -> Path:
    """Return the FerretDB binary, building it with ``go build`` once per source change."""
    sources = [HERE / "ferretdb" / name for name in ("go.mod", "go.sum", "main.go")]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in [*sources,
                                                              *FERRETDB_ADDED_FILES.values()])
                            + repr(FERRETDB_PATCHES).encode()).hexdigest()[:12]
    binary = CACHE / f"ferretdb-{FERRETDB_VERSION}-{digest}" / "ferretdb"
    if binary.exists():
        return binary
    if not shutil.which("go"):
        raise InfraError("FerretDB is built with Go; install Go 1.24+")
    _log(f"building FerretDB {FERRETDB_VERSION} with go build (first run only)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    with tempfile.TemporaryDirectory(dir=binary.parent) as build:
        build_dir = Path(build)
        for source in sources:
            shutil.copy(source, build_dir / source.name)
        _patched_ferretdb_source(build_dir, env)
        staging = binary.with_suffix(".partial")
        _run(["go", "build", "-o", str(staging), "."], "go build of FerretDB failed",
             cwd=build_dir, env=env)
    staging.rename(binary)
    return binary


def _patched_ferretdb_source(build_dir: Path, env: dict[str, str]) -> None:
    """Copy FerretDB's module source next to the build, patch it, and point go.mod at it."""
    module = f"github.com/FerretDB/FerretDB@v{FERRETDB_VERSION}"
    result = subprocess.run(["go", "mod", "download", "-json", module], cwd=build_dir,
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise InfraError(f"go mod download {module} failed:\n{result.stdout}{result.stderr}")
    source = build_dir / "ferretdb-src"
    shutil.copytree(json.loads(result.stdout)["Dir"], source)
    for path in source.rglob("*"):  # the module cache is read-only
        path.chmod(path.stat().st_mode | 0o200)
    for relative, old, new in FERRETDB_PATCHES:
        target = source / relative
        text = target.read_text()
        if old not in text:
            raise InfraError(f"FerretDB patch does not apply to {relative}: {old!r} not found")
        target.write_text(text.replace(old, new))  # every occurrence: find and explain
    for relative, added in FERRETDB_ADDED_FILES.items():
        shutil.copy(added, source / relative)
    _run(["go", "mod", "edit", f"-replace=github.com/FerretDB/FerretDB=./{source.name}"],
         "go mod edit failed", cwd=build_dir, env=env)


def _run(cmd: list[str], what: str, **kwargs) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise InfraError(f"{what} (exit {result.returncode}):\n{tail}")


# --- one running instance ------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A named Kafka + FerretDB pair with its own ports and run directory."""

    name: str
    kafka_port: int
    controller_port: int
    mongo_port: int

    @classmethod
    def named(cls, name: str) -> Instance:
        kafka, controller, mongo = DEFAULT_PORTS.get(name, DEFAULT_PORTS["test"])
        prefix = f"CDP_LOCAL_{name.upper()}_"
        return cls(
            name=name,
            kafka_port=int(os.environ.get(prefix + "KAFKA_PORT", kafka)),
            controller_port=int(os.environ.get(prefix + "CONTROLLER_PORT", controller)),
            mongo_port=int(os.environ.get(prefix + "MONGO_PORT", mongo)),
        )

    @property
    def run_dir(self) -> Path:
        return Path(os.environ.get("CDP_RUN_DIR", REPO / ".run")) / self.name

    @property
    def kafka_bootstrap(self) -> str:
        return os.environ.get("CDP_KAFKA_BOOTSTRAP") or f"127.0.0.1:{self.kafka_port}"

    @property
    def mongo_uri(self) -> str:
        return os.environ.get("CDP_MONGO_URI") or f"mongodb://127.0.0.1:{self.mongo_port}/"

    @property
    def kafka_is_external(self) -> bool:
        return bool(os.environ.get("CDP_KAFKA_BOOTSTRAP"))

    @property
    def mongo_is_external(self) -> bool:
        return bool(os.environ.get("CDP_MONGO_URI"))

    def env(self) -> dict[str, str]:
        """The variables that point Muisti's services at this instance."""
        return {"CDP_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "CDP_MONGO_URI": self.mongo_uri}

    # lifecycle

    def start(self, timeout: float = 120.0) -> None:
        """Start whatever is not already running and wait until both really answer.

        Raises InfraError with the tail of the server log when a server does not come up.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.mongo_is_external:
            self.start_mongo()
        if not self.kafka_is_external:
            self.start_kafka()
        self.wait_ready(timeout)

    def stop(self) -> None:
        """Stop both servers started by this instance (a no-op for external ones)."""
        self.stop_kafka()
        self.stop_mongo()

    def wipe(self) -> None:
        """Stop and delete this instance's data: the next start begins empty."""
        self.stop()
        for data in ("kafka-data", "ferretdb-data"):
            shutil.rmtree(self.run_dir / data, ignore_errors=True)

    def start_kafka(self) -> None:
        if self._alive("kafka"):
            return
        libs = kafka_libs()
        data = self.run_dir / "kafka-data"
        props = self.run_dir / "server.properties"
        props.write_text(self._kafka_properties(data))
        classpath = f"{libs}/*"
        if not (data / "meta.properties").exists():
            _run(
                [
                    "java", "-cp", classpath, "kafka.tools.StorageTool", "format",
                    # one argument: an id starting with "-" is not read as an option
                    f"--cluster-id={_kafka_cluster_id()}", "-c", str(props),
                    "--ignore-formatted",
                ],
                "formatting Kafka storage failed",
            )
        log4j = HERE / "kafka" / "log4j2.xml"
        self._spawn(
            "kafka",
            [
                "java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.run_dir}",
                "-cp", classpath, "kafka.Kafka", str(props),
            ],
        )

    def stop_kafka(self) -> None:
        self._terminate("kafka")

    def start_mongo(self) -> None:
        if self._alive("ferretdb"):
            return
        binary = ferretdb_binary()
        data = self.run_dir / "ferretdb-data"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "ferretdb",
            [
                str(binary),
                "-listen-addr", f"127.0.0.1:{self.mongo_port}",
                # WAL without an fsync per commit, as MongoDB acknowledges a write before its
                # journal flush: a killed store loses nothing, a power cut the last moments.
                # Measured on 100k documents: updates 391 -> 1,507/s, reads unchanged
                "-sqlite-url", f"file:{data}/?_pragma=synchronous(normal)",
            ],
            # FerretDB allocates freely per command: collecting at 4x the live heap instead of
            # 2x took a tenth off its CPU per read, for tens of MB
            env={"GOGC": "400"},
        )

    def stop_mongo(self) -> None:
        self._terminate("ferretdb")

    def kill_mongo(self) -> None:
        """SIGKILL the store, as a crash would: no shutdown of its own (fault drills)."""
        self._terminate("ferretdb", crash=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until a Mongo ping and a Kafka produce/consume round trip succeed."""
        deadline = time.monotonic() + timeout
        self._wait(lambda: _mongo_answers(self.mongo_uri), "ferretdb", deadline)
        self._wait(lambda: _kafka_round_trip(self.kafka_bootstrap), "kafka", deadline)

    def status(self) -> dict[str, str]:
        return {
            "kafka": "external" if self.kafka_is_external
            else ("running" if self._alive("kafka") else "stopped"),
            "ferretdb": "external" if self.mongo_is_external
            else ("running" if self._alive("ferretdb") else "stopped"),
        }

    # internals

    def _kafka_properties(self, data: Path) -> str:
        host = "127.0.0.1"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{host}:{self.controller_port}",
                f"listeners=PLAINTEXT://{host}:{self.kafka_port},"
                f"CONTROLLER://{host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{host}:{self.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=4",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "group.min.session.timeout.ms=3000",
                # the default 128 MiB dedupe buffer does not fit a bounded local heap
                "log.cleaner.dedupe.buffer.size=16777216",
                "log.retention.hours=168",
                "",
            ]
        )

    def _pidfile(self, server: str) -> Path:
        return self.run_dir / f"{server}.pid"

    def _logfile(self, server: str) -> Path:
        return self.run_dir / f"{server}.log"

    def pid(self, server: str) -> int | None:
        """The pid of ``server`` (kafka, ferretdb) while this instance runs it."""
        return self._pid(server) if self._alive(server) else None

    def _pid(self, server: str) -> int | None:
        try:
            return int(self._pidfile(server).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, server: str) -> bool:
        pid = self._pid(server)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie or a reused pid of another program does not count; a process caught
        # between fork and exec shows an empty or its parent's command line, so only a
        # command line naming neither the run directory nor the server disqualifies
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, IndexError):
            return False
        if state == "Z":
            _reap(pid)
            return False
        if str(self.run_dir).encode() in cmdline or server.encode() in cmdline:
            return True
        return pid in _spawned

    def _spawn(self, server: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        port = self.kafka_port if server == "kafka" else self.mongo_port
        if _port_open(port):
            raise InfraError(
                f"port {port} for {server} is taken by another program; set "
                f"CDP_LOCAL_{self.name.upper()}_{'KAFKA' if server == 'kafka' else 'MONGO'}_PORT"
            )
        log = open(self._logfile(server), "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # outlives `make run`'s shell
        )
        log.close()
        _spawned.add(proc.pid)
        self._pidfile(server).write_text(str(proc.pid))
        _log(f"started {server} (pid {proc.pid}), log {self._logfile(server)}")

    def _terminate(self, server: str, timeout: float = 30.0, *, crash: bool = False) -> None:
        pid = self._pid(server)
        if pid is None or not self._alive(server):
            self._pidfile(server).unlink(missing_ok=True)
            return
        if not crash:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._alive(server):
                _reap(pid)
                time.sleep(0.1)
        if self._alive(server):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            _reap(pid)
        self._pidfile(server).unlink(missing_ok=True)
        _log(f"stopped {server}")

    def _wait(self, check, server: str, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self._is_external(server) and not self._alive(server):
                raise InfraError(f"{server} exited during start-up:\n{self._tail(server)}")
            try:
                check()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = exc
                time.sleep(0.5)
        raise InfraError(f"{server} not ready in time ({last_error}):\n{self._tail(server)}")

    def _is_external(self, server: str) -> bool:
        return self.kafka_is_external if server == "kafka" else self.mongo_is_external

    def _tail(self, server: str, lines: int = 40) -> str:
        try:
            text = self._logfile(server).read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _kafka_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _mongo_answers(uri: str) -> None:
    import pymongo

    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000) as client:
        client.admin.command("ping")


def _kafka_round_trip(bootstrap: str) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    topic = "muisti.readiness"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    try:
        token = uuid.uuid4().hex.encode()
        offset = producer.send(topic, token).get(timeout=10).offset
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, offset)
        for record in consumer.poll(timeout_ms=5000).get(partition, []):
            if record.value == token:
                return
        raise InfraError("produced a message but could not read it back")
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.infra", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["provision", "start", "stop", "status", "env"])
    parser.add_argument("--name", default="dev", help="instance name (dev, test, ...)")
    parser.add_argument("--fresh", action="store_true",
                        help="with start: delete the instance's data first")
    args = parser.parse_args(argv)
    instance = Instance.named(args.name)
    try:
        if args.command == "provision":
            started = time.monotonic()
            kafka_libs()
            ferretdb_binary()
            _log(f"provisioned in {time.monotonic() - started:.1f}s (cache {CACHE})")
        elif args.command == "start":
            started = time.monotonic()
            if args.fresh:
                instance.wipe()
            instance.start()
            _log(f"{args.name}: Kafka {instance.kafka_bootstrap}, store {instance.mongo_uri} "
                 f"ready in {time.monotonic() - started:.1f}s")
        elif args.command == "stop":
            instance.stop()
        elif args.command == "status":
            for server, state in instance.status().items():
                print(f"{server}: {state}")
        elif args.command == "env":
            for key, value in instance.env().items():
                print(f"export {key}={value}")
    except InfraError as exc:
        print(f"[infra] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
