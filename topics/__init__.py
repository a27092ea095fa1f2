"""The bus's types: topic declarations, events, the Avro codec and the Kafka binding. No I/O lives here.

Everything that talks to Kafka (`infra.bus`, `streams`) depends on these interfaces, the way faust's concrete
modules depend on `faust.types`.
"""

from topics import catalog
from topics.binding import KafkaRecord, decode_event, encode_event, event_id_of
from topics.codec import AvroCodec, Decoded
from topics.deadletter import dead_letter
from topics.errors import (
    BusError,
    ConfigError,
    DecodeError,
    EncodeError,
    EventError,
    SchemaError,
    StackError,
    SwitchboardError,
    TopicError,
)
from topics.event import Event, derived_id, new_id
from topics.processor import Emit, Processor, StatefulProcessor
from topics.schema_store import Schema, SchemaStore, default_store
from topics.spec import Cleanup, TopicSpec

__all__ = [
    "AvroCodec",
    "BusError",
    "Cleanup",
    "ConfigError",
    "DecodeError",
    "Decoded",
    "Emit",
    "EncodeError",
    "Event",
    "EventError",
    "KafkaRecord",
    "Processor",
    "Schema",
    "SchemaError",
    "SchemaStore",
    "StackError",
    "StatefulProcessor",
    "SwitchboardError",
    "TopicError",
    "TopicSpec",
    "catalog",
    "dead_letter",
    "decode_event",
    "default_store",
    "derived_id",
    "encode_event",
    "event_id_of",
    "new_id",
]
