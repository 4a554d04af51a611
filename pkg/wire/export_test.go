package wire

import fx "github.com/fxamacker/cbor/v2"

// fxUnmarshal decodes leniently, to build malformed inputs in tests.
func fxUnmarshal(b []byte, v any) error { return fx.Unmarshal(b, v) }
