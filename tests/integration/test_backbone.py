"""The backbone against the real embedded stack: a turn in, a reply out; bad input dead-lettered while the worker
keeps serving; external-config mode starts nothing embedded."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from infra.bus.clients import producer as make_producer
from infra.config import Settings, load_settings
from infra.console import ChatSession
from infra.embedded import EmbeddedStack
from infra.embedded.components import plan
from infra.testing import collect_events
from topics import AvroCodec, Event, StackError, catalog, derived_id, encode_event

pytestmark = pytest.mark.integration


async def test_a_turn_goes_in_and_a_reply_comes_out(stack: Settings) -> None:
    async with ChatSession(stack, "echo", "it-turn-1") as chat:
        turn, replies = await chat.say("hello")
        turn2, replies2 = await chat.say("how are you")

    assert [r.data["text"] for r in replies2] == ["You said: how are you (turn 2)"]
    [reply] = replies
    assert reply.type == catalog.DIALOGUE_REPLIES.value_schema
    assert reply.data["in_reply_to"] == turn.id
    assert reply.causationid == turn.id
    assert reply.correlationid == turn.correlationid == turn.id
    assert reply.id == derived_id(turn.id, "reply")
    assert reply.subject == "it-turn-1"
    assert reply.principal == turn.principal
    assert reply.data["text"].startswith("Hello!")
    assert turn2.id != turn.id


async def test_bad_messages_go_to_dead_letters_and_the_worker_keeps_serving(stack: Settings) -> None:
    codec = AvroCodec()
    valid_turn = encode_event(Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/tests", subject="dl-3",
                                    data={"session_id": "dl-3", "agent": "echo", "text": "x"}), codec)
    wrong_type = encode_event(Event(type=catalog.DIALOGUE_REPLIES.value_schema, source="/tests", subject="dl-2",
                                    data={"session_id": "dl-2", "agent": "echo", "text": "x", "in_reply_to": "t"}),
                              codec)
    bad = {
        b"dl-1": (b"not avro at all", []),                                  # no CloudEvents headers
        b"dl-2": (wrong_type.value, wrong_type.headers),                    # a Reply on the turns topic
        b"dl-3": (valid_turn.value[:-1], valid_turn.headers),               # truncated Avro body
    }
    positions = {}
    producer = make_producer(stack)
    await producer.start()
    try:
        for key, (value, headers) in bad.items():
            meta = await producer.send_and_wait(catalog.DIALOGUE_TURNS.name, value, key=key, headers=headers)
            positions[key] = (meta.partition, meta.offset)
    finally:
        await producer.stop()

    async with ChatSession(stack, "echo", "it-after-bad") as chat:
        _, replies = await chat.say("still there?")
    assert [r.data["text"] for r in replies] == ["You said: still there? (turn 1)"]

    # Two processors read dialogue.turns (echo and the dialogue recogniser); each reports what it could not handle
    # under its own name, so a bad message yields one letter per consumer and none is silently skipped by either.
    letters = await collect_events(stack, catalog.DEAD_LETTERS, lambda e: e.data["key"] in bad, count=6)
    by_consumer = {(letter.data["processor"], letter.data["key"]): letter.data for letter in letters}
    assert set(by_consumer) == {(processor, key) for processor in ("echo", "recogniser") for key in bad}
    by_key = {key: letter for (processor, key), letter in by_consumer.items() if processor == "echo"}
    for key, letter in by_key.items():
        assert letter["value"] == bad[key][0], "the original bytes are kept"
        assert (letter["partition"], letter["offset"]) == positions[key]
        assert letter["topic"] == catalog.DIALOGUE_TURNS.name
    assert "missing header" in by_key[b"dl-1"]["reason"]
    assert "switchboard.dialogue.Reply" in by_key[b"dl-2"]["reason"]
    assert by_key[b"dl-3"]["error"] == "DecodeError"


def _processes_under(data_dir: Path) -> list[str]:
    names = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if str(data_dir) in cmd or env.get("SWITCHBOARD_DATA_DIR") == str(data_dir):
            names.append(cmd)
    return names


async def test_external_config_starts_nothing_embedded(stack: Settings, tmp_path: Path) -> None:
    external = load_settings(
        data_dir=tmp_path,
        kafka={"bootstrap_servers": stack.bootstrap_servers},
        s3={"endpoint_url": stack.s3_endpoint, "access_key_id": stack.s3.access_key_id,
            "secret_access_key": stack.s3.secret_access_key.get_secret_value()},
        mqtt={"host": "127.0.0.1", "port": stack.embedded.mqtt_port},
        workers={"count": 1, "app_id": "switchboard-external-test"},
        bridge={"enabled": False},  # the session stack's bridge already serves that MQTT broker
    )
    assert [c.name for c in plan(external)] == ["worker-0", "supervisor"]
    with_bridge = load_settings(data_dir=tmp_path, kafka={"bootstrap_servers": stack.bootstrap_servers},
                                s3=external.s3.model_dump(), mqtt={"host": "127.0.0.1", "port": 1883})
    assert [c.name for c in plan(with_bridge)] == ["worker-0", "mqtt-bridge", "supervisor"], \
        "ours runs (and the supervisor that restarts it), nothing embedded"
    embedded = EmbeddedStack(external)
    try:
        statuses = await embedded.up()
        assert [(s.name, s.running, s.healthy) for s in statuses] == [("worker-0", True, True),
                                                                      ("supervisor", True, True)]
        running = sorted(_processes_under(tmp_path))
        assert len(running) == 2 and "infra.embedded.supervisor" in running[0] and "streams.worker" in running[1], \
            running
        # The external worker answers too; both workers emit the same reply id, and the reader drops the twin.
        async with ChatSession(external, "echo", "it-external") as chat:
            _, replies = await chat.say("via external config")
        assert [r.data["text"] for r in replies] == ["You said: via external config (turn 1)"]
    finally:
        embedded.down()
    assert _processes_under(tmp_path) == []


async def test_an_unreachable_external_service_is_named(tmp_path: Path) -> None:
    from infra.testing import free_port_block

    [dead_port] = free_port_block(1)
    settings = load_settings(data_dir=tmp_path, kafka={"bootstrap_servers": f"127.0.0.1:{dead_port}"},
                             workers={"count": 0}, s3={"endpoint_url": f"http://127.0.0.1:{dead_port}"},
                             mqtt={"host": "127.0.0.1", "port": dead_port})
    with pytest.raises(StackError, match=f"external kafka at 127.0.0.1:{dead_port} does not answer"):
        await EmbeddedStack(settings).up()
    assert _processes_under(tmp_path) == []


def test_embedded_object_storage_refuses_anonymous_access(stack: Settings) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{stack.s3_endpoint}/{stack.s3.bucket}/", timeout=10)
    assert refused.value.code == 403
