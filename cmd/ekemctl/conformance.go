package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/entropykem/entropykem/internal/conformance"
)

// conformanceCmd runs "ekemctl conformance device|issuer ...": the
// conformance kit of package internal/conformance against another
// implementation over a real broker, until done or SIGINT/SIGTERM.
func conformanceCmd(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return conformance.Command(ctx, args, stdout, stderr)
}
