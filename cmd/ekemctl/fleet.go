package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/entropykem/entropykem/internal/monitor"
)

// fleet runs "ekemctl fleet ...": the read-only fleet monitor of package
// internal/monitor, until SIGINT or SIGTERM for -watch and -prometheus.
func fleet(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return monitor.Command(ctx, args, stdout, stderr)
}
