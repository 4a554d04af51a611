package main

// The NATS cluster's accounts and node configurations (broker-config/nats):
// with -nats-nodes, mkcreds also writes DIR/nats/accounts.conf and one
// DIR/nats/NODE.conf per node. Kept in its own file, apart from the
// Mosquitto credentials.

import (
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/entropykem/entropykem/broker-config/creds"
	natsconf "github.com/entropykem/entropykem/broker-config/nats"
)

// NATSDir is the subdirectory of -out that holds the cluster's files.
const NATSDir = "nats"

// Paths inside a NATS node's container (docker-compose.yml, profile
// "cluster"): the rendered files in /etc/nats, the broker certificate in
// /etc/nats/certs, the JetStream store in /data.
const (
	natsCertFile = "/etc/nats/certs/server.crt"
	natsKeyFile  = "/etc/nats/certs/server.key"
)

type natsFlags struct{ nodes string }

func addNATSFlags(fs *flag.FlagSet) *natsFlags {
	n := &natsFlags{}
	fs.StringVar(&n.nodes, "nats-nodes", "", "also write a NATS JetStream cluster's accounts and node configurations for these node host names (3, comma-separated)")
	return n
}

// check refuses, before anything is written, what the cluster cannot
// serve: device ids with '.' and a node list that is not three distinct
// host names.
func (n *natsFlags) check(devices []string) error {
	if n.nodes == "" {
		return nil
	}
	nodes := splitList(n.nodes)
	if len(nodes) != 3 {
		return fmt.Errorf("-nats-nodes needs 3 host names, got %d", len(nodes))
	}
	seen := map[string]bool{}
	for _, h := range nodes {
		if seen[h] {
			return fmt.Errorf("-nats-nodes: %q twice", h)
		}
		seen[h] = true
	}
	for _, id := range devices {
		if err := natsconf.ValidateDeviceID(id); err != nil {
			return err
		}
	}
	return nil
}

// write renders the cluster's files into DIR/nats, never overwriting one.
func (n *natsFlags) write(out string, set *creds.Set, tls bool, stdout io.Writer) error {
	if n.nodes == "" {
		return nil
	}
	dir := filepath.Join(out, NATSDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	accounts, err := natsconf.RenderAccounts(set)
	if err != nil {
		return err
	}
	if err := writeNewFile(filepath.Join(dir, natsconf.AccountsFileName), []byte(accounts)); err != nil {
		return err
	}
	pw := make([]byte, 32)
	if _, err := rand.Read(pw); err != nil {
		return err
	}
	nodes := splitList(n.nodes)
	var routes []string
	for _, h := range nodes {
		routes = append(routes, net.JoinHostPort(h, fmt.Sprint(natsconf.ShippedClusterPort)))
	}
	for _, h := range nodes {
		o := natsconf.NodeOptions{ServerName: h, Routes: routes, RoutePassword: base64.RawURLEncoding.EncodeToString(pw)}
		if tls {
			o.TLSCert, o.TLSKey = natsCertFile, natsKeyFile
		}
		conf, err := natsconf.RenderNode(o)
		if err != nil {
			return err
		}
		if err := writeNewFile(filepath.Join(dir, h+".conf"), []byte(conf)); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "hint: NATS cluster files in %s: install accounts.conf and NODE.conf in /etc/nats on each node (see broker-config/nats/README.md)\n", dir)
	return nil
}

// writeNewFile creates path with mode 0600; it fails if path exists.
func writeNewFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("refusing to overwrite or cannot create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
