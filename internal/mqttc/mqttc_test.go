package mqttc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/embedbroker"
)

func TestSubscribeAndInbox(t *testing.T) {
	b, err := embedbroker.Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.AddUser("dev-1", "pw1"); err != nil {
		t.Fatal(err)
	}
	if err := b.AddUser(embedbroker.IssuerUser, "pwi"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dev, err := Dial(ctx, Options{Broker: b.URL(), ClientID: "dev-1", Username: "dev-1", Password: "pw1", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	// The ACL refuses another device's ticket: the SUBACK says so, and
	// Subscribe must report it rather than succeed silently.
	if err := dev.Subscribe("ekem/v1/ticket/dev-2"); !errors.Is(err, ErrSubscribeRefused) {
		t.Fatalf("refused subscription: got %v", err)
	}
	if err := dev.Subscribe("ekem/v1/ticket/dev-1"); err != nil {
		t.Fatal(err)
	}
	iss, err := Dial(ctx, Options{Broker: b.URL(), ClientID: "iss", Username: embedbroker.IssuerUser, Password: "pwi", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	for _, p := range []string{"a", "b", "c"} {
		if err := iss.Publish("ekem/v1/ticket/dev-1", []byte(p), false); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"a", "b", "c"} {
		m, ok := dev.Inbox().Next(ctx)
		if !ok || string(m.Payload) != want {
			t.Fatalf("got %q %v, want %q in order", m.Payload, ok, want)
		}
	}
	// Refused credentials fail at once instead of retrying forever.
	start := time.Now()
	if _, err := Dial(ctx, Options{Broker: b.URL(), ClientID: "x", Username: "dev-1", Password: "wrong", Timeout: 2 * time.Second}); !errors.Is(err, ErrRefused) {
		t.Fatalf("wrong password: got %v, want ErrRefused", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("a refused connection was retried")
	}
	// An unreachable broker is retried until the context ends.
	short, cancel2 := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel2()
	if _, err := Dial(short, Options{Broker: "tcp://127.0.0.1:1", ClientID: "y", Timeout: time.Second}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unreachable broker: got %v", err)
	}
}
