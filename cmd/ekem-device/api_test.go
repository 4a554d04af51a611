package main

import (
	"errors"
	"testing"
)

func TestAPIFlags(t *testing.T) {
	path, o, err := api{addr: "unix:/run/ekem/keys.sock", mode: "0660", group: "0"}.options()
	if err != nil || path != "/run/ekem/keys.sock" || o.Mode != 0o660 || o.Group != 0 {
		t.Fatalf("%q %+v %v", path, o, err)
	}
	if path, _, err := (api{mode: "0600"}).options(); err != nil || path != "" {
		t.Fatalf("no -api: %q %v", path, err)
	}
	for _, bad := range []api{{addr: "tcp:127.0.0.1:1", mode: "0600"}, {addr: "unix:", mode: "0600"},
		{addr: "unix:/x", mode: "0666"}, {addr: "unix:/x", mode: "abc"}, {mode: "0600", group: "0"},
		{addr: "unix:/x", mode: "0660", group: "no-such-group-here"}} {
		if _, _, err := bad.options(); !errors.Is(err, errUsage) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}
