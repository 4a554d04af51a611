package cbor

import "encoding/binary"

// The Append functions write single data items in RFC 8949 §4.2.1 core
// deterministic form: every head (§3) in its shortest form, definite
// lengths only. They exist for the messages an issuer writes once per
// device per epoch (pkg/wire's Ticket body and Ticket), where encoding by
// reflection costs as much as the hashing around it; every other message
// goes through Marshal. A map written with them is deterministic only if
// its keys are appended in the §4.2.1 order (for small unsigned keys:
// ascending). TestAppendMatchesMarshal holds them to Marshal's output.

// Major types, RFC 8949 §3.1.
const (
	majorUint  = 0
	majorBytes = 2
	majorText  = 3
	majorArray = 4
	majorMap   = 5
)

// HeadSize returns the length of the shortest head with argument n.
func HeadSize(n uint64) int {
	switch {
	case n < 24:
		return 1
	case n <= 0xff:
		return 2
	case n <= 0xffff:
		return 3
	case n <= 0xffffffff:
		return 5
	default:
		return 9
	}
}

func appendHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= 0xff:
		return append(b, m|24, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, m|27), n)
	}
}

// AppendBytesHead appends the head of a byte string of n bytes; the caller
// then appends exactly n bytes.
func AppendBytesHead(b []byte, n int) []byte { return appendHead(b, majorBytes, uint64(n)) }

// AppendUint appends the unsigned integer v.
func AppendUint(b []byte, v uint64) []byte { return appendHead(b, majorUint, v) }

// AppendBytes appends v as a byte string.
func AppendBytes(b, v []byte) []byte {
	return append(appendHead(b, majorBytes, uint64(len(v))), v...)
}

// AppendText appends s as a text string. s must be valid UTF-8; the caller
// validates it, as Marshal's callers do.
func AppendText(b []byte, s string) []byte {
	return append(appendHead(b, majorText, uint64(len(s))), s...)
}

// AppendArrayHead appends the head of an array of n items.
func AppendArrayHead(b []byte, n int) []byte { return appendHead(b, majorArray, uint64(n)) }

// AppendMapHead appends the head of a map of n pairs.
func AppendMapHead(b []byte, n int) []byte { return appendHead(b, majorMap, uint64(n)) }
