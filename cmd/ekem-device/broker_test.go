package main

import (
	"testing"

	"github.com/entropykem/entropykem/internal/testbroker"
)

// startBroker and dialRecorder are the shared in-process test broker.
func startBroker(t testing.TB) string { return testbroker.Start(t) }

func dialRecorder(t testing.TB, url, id string, filters ...string) *testbroker.Client {
	return testbroker.Dial(t, url, id, filters...)
}
