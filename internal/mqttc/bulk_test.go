package mqttc

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/embedbroker"
)

// TestBulk: a bulk of more messages than its window arrives complete and
// retained; Stop ends it and what is left is counted as stopped, not
// failed; on a closed connection every message fails after its tries and
// the retries are counted.
func TestBulk(t *testing.T) {
	b, err := embedbroker.Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.AddUser(embedbroker.IssuerUser, "pwi"); err != nil {
		t.Fatal(err)
	}
	if err := b.AddUser(embedbroker.MonitorUser, "pwm"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o := Options{Broker: b.URL(), ClientID: "iss", Username: embedbroker.IssuerUser, Password: "pwi", Timeout: 2 * time.Second}
	iss, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	const n = 250
	bulk := iss.Bulk(BulkOptions{Window: 16, Tries: 2})
	for k := range n {
		bulk.Publish(fmt.Sprintf("ekem/v1/ticket/dev-%03d", k), []byte(fmt.Sprint(k)))
	}
	if r := bulk.Finish(); r.Messages != n || r.Failed != 0 || r.Stopped != 0 || r.Retried != 0 {
		t.Fatalf("bulk: %+v", r)
	}
	got, err := FetchRetained(ctx, Options{Broker: b.URL(), ClientID: "mon", Username: embedbroker.MonitorUser, Password: "pwm",
		Timeout: 2 * time.Second}, []string{"ekem/v1/ticket/+"}, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("%d retained tickets, want %d", len(got), n)
	}

	stopAt := errors.New("lease lost")
	sent := 0
	bulk = iss.Bulk(BulkOptions{Window: 4, Stop: func() error {
		if sent == 10 {
			return stopAt
		}
		sent++
		return nil
	}})
	for k := range 30 {
		bulk.Publish(fmt.Sprintf("ekem/v1/ticket/dev-%03d", k), []byte("x"))
	}
	if r := bulk.Finish(); r.Stopped != 20 || r.Failed != 0 || !errors.Is(r.StopErr, stopAt) {
		t.Fatalf("stopped bulk: %+v", r)
	}

	iss.Close()
	bulk = iss.Bulk(BulkOptions{Window: 4, Tries: 2})
	for k := range 5 {
		bulk.Publish(fmt.Sprintf("ekem/v1/ticket/dev-%03d", k), []byte("y"))
	}
	if r := bulk.Finish(); r.Failed != 5 || r.Retried != 5 || r.FirstFailed != "ekem/v1/ticket/dev-000" {
		t.Fatalf("bulk on a closed connection: %+v", r)
	}
}
