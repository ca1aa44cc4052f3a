"""Every wire limit, named once. Byzantine input is checked against these before any
buffering or state allocation (DESIGN.md section 4)."""

#: Largest encoded message (one signed envelope) accepted from the network.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Length-prefix size of one frame (4-byte big-endian unsigned).
FRAME_HEADER_SIZE = 4
#: Largest frame payload; checked from the header before the payload is buffered.
MAX_FRAME_SIZE = MAX_MESSAGE_SIZE
#: Deepest container nesting accepted by the canonical CBOR decoder.
MAX_NESTING_DEPTH = 16
#: Largest integer magnitude on the wire: CBOR major types 0/1 without bignum tags.
MAX_UINT = 2**64 - 1
MIN_INT = -(2**64)
#: Most client requests carried by one PRE-PREPARE.
MAX_BATCH_SIZE = 1024
#: Most request bytes a primary puts in one PRE-PREPARE: the rest of MAX_MESSAGE_SIZE is
#: left for the envelope, so no batch of authorised (even maximal) requests is unsendable.
MAX_BATCH_BYTES = 3 * 1024 * 1024
#: Largest opaque application operation inside one REQUEST.
MAX_OPERATION_SIZE = 64 * 1024
#: Largest application result inside one REPLY.
MAX_RESULT_SIZE = 64 * 1024
#: Longest identifier string (client ids, committee ids, names).
MAX_ID_LENGTH = 128
#: Largest log window L (sequence numbers above the stable checkpoint): bounds the prepared
#: certificates of one VIEW-CHANGE and the O set of one NEW-VIEW.
MAX_LOG_WINDOW = 4096
#: Largest checkpoint state (application snapshot plus reply table) a replica accepts by
#: state transfer; it arrives in chunks, each within one message.
MAX_STATE_SIZE = 256 * 1024 * 1024
#: Largest state chunk a replica sends (leaves room for the proof within one message).
MAX_STATE_CHUNK = 1024 * 1024
