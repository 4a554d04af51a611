package wire

import (
	"errors"
	"fmt"
)

// ErrBadDeviceID and ErrBadLabel are returned (wrapped) for a device id,
// purpose or group that breaks the rules of schema/PROTOCOL.md §Names.
var (
	ErrBadDeviceID = errors.New("wire: invalid device id")
	ErrBadLabel    = errors.New("wire: invalid label")
)

// ValidateDeviceID reports whether id is 1–64 characters of
// [A-Za-z0-9._-] starting with a letter or digit. The id is the device's
// broker username and a topic level, so it must never contain '/', '+',
// '#' or anything outside ASCII.
func ValidateDeviceID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("%w: length %d, want 1..%d", ErrBadDeviceID, len(id), MaxIDLen)
	}
	if !isAlnum(id[0]) {
		return fmt.Errorf("%w: must start with a letter or digit", ErrBadDeviceID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%w: byte %d is not one of [A-Za-z0-9._-]", ErrBadDeviceID, i)
		}
	}
	return nil
}

// ValidateLabel reports whether s is a valid purpose or group: 1–64
// printable ASCII characters (0x21–0x7e) other than ';', which separates
// them in the key_epoch info string (schema/PROTOCOL.md §Key schedule).
func ValidateLabel(s string) error {
	if len(s) == 0 || len(s) > MaxLabelLen {
		return fmt.Errorf("%w: length %d, want 1..%d", ErrBadLabel, len(s), MaxLabelLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ';' {
			return fmt.Errorf("%w: byte %d is not printable ASCII other than ';'", ErrBadLabel, i)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
