package testclock

import (
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	start := time.Unix(1_750_000_000, 0)
	c := New(start)
	done := make(chan time.Time)
	go func() { done <- c.Now() }()
	if got := <-done; !got.Equal(start) {
		t.Fatalf("Now = %v, want %v", got, start)
	}
	c.Add(time.Minute)
	if got := c.Now(); !got.Equal(start.Add(time.Minute)) {
		t.Fatalf("after Add: %v", got)
	}
	c.Set(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("after Set: %v", got)
	}
}
