package wire

// Bounds of the wire format, all in one place (schema/PROTOCOL.md §Limits).
// Every decoder checks the size of its input against these before any work.
// Never lower one without a protocol version change: a valid message of an
// older peer would be rejected.
const (
	// Version is the only message version this implementation speaks.
	Version = 1

	// MaxRegistration bounds an encoded Registration: the largest public
	// key (ML-KEM-1024, 1568 bytes) plus a 64-byte id and a re-key proof.
	MaxRegistration = 2048
	// MaxTicketBody bounds an encoded ticket body: the largest ciphertext
	// (ML-KEM-1024, 1568 bytes) plus fixed fields and two 64-byte labels.
	MaxTicketBody = 2048
	// MaxTicket bounds a Ticket message: a body plus a proof of MaxProofLen
	// hashes.
	MaxTicket = MaxTicketBody + 64 + MaxProofLen*(HashSize+2)
	// MaxEpochRoot bounds an encoded EpochRoot payload: 128 bytes of
	// fixed fields plus a chunk height and MaxChunks chunk roots (2,310
	// bytes at most), so that the signed root stays within
	// signature.MaxSign1Size with an ML-DSA-87 signature.
	MaxEpochRoot = 2560
	// MaxChunks bounds the chunk roots of a streamed epoch's EpochRoot
	// (PROTOCOL.md §5.5): an issuer picks chunks of 2^h leaves with
	// ceil(tree_size / 2^h) <= MaxChunks.
	MaxChunks = 64
	// MaxChunkHeight bounds chunk_height: chunks of at most 2^63 leaves.
	MaxChunkHeight = 63
	// MaxStatus bounds an encoded Status: a next public key of up to 1568
	// bytes, four 32-byte hashes and tags, a device id and integers.
	MaxStatus = 2048

	// HashSize is the size of every hash, tag and Merkle node: SHA-256.
	HashSize = 32
	// MaxProofLen bounds an inclusion proof: a tree of 2^64 leaves.
	MaxProofLen = 64

	// MaxIDLen bounds device ids; MaxLabelLen bounds purpose and group.
	MaxIDLen    = 64
	MaxLabelLen = 64

	// MaxEpoch keeps epochs exactly representable in every language's
	// number type (2^53 - 1, the largest safe integer of IEEE 754 doubles).
	MaxEpoch = 1<<53 - 1
	// MaxTime is the largest accepted Unix time in seconds
	// (9999-12-31T23:59:59Z).
	MaxTime = 253402300799
	// MaxTTL is the longest ticket lifetime in seconds: 31 days.
	MaxTTL = 31 * 24 * 3600
	// MaxStatusSeq bounds the Status sequence number (2^53 - 1).
	MaxStatusSeq = 1<<53 - 1
)
