// Package natsconf renders the configuration of entropykem's clustered
// broker: a 3-node NATS JetStream cluster serving the fleet through NATS's
// MQTT 3.1.1 interface (DESIGN.md, "A clustered broker"; README.md in this
// directory).
//
// Two files make a node: the node's own configuration (RenderNode, from the
// embedded template node.conf.tmpl) and the accounts file shared by all
// nodes (RenderAccounts), which gives the issuer, the monitor and every
// device exactly the rights of the Mosquitto ACL (broker-config/acl) as NATS
// subject permissions. Mosquitto's ACL keys on %u; NATS (without JWT
// accounts) has no such pattern, so every device gets its own entry.
package natsconf

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"text/template"

	"github.com/entropykem/entropykem/broker-config/creds"
)

//go:embed node.conf.tmpl
var nodeTemplate string

var nodeTmpl = template.Must(template.New("node.conf").Parse(nodeTemplate))

// Shipped ports and names (NATS's defaults; MQTT on 1883 like Mosquitto's
// password listener).
const (
	ShippedClientPort  = 4222
	ShippedClusterPort = 6222
	ShippedHTTPPort    = 8222
	ShippedMQTTPort    = 1883
	ShippedClusterName = "ekem"
	ShippedStoreDir    = "/data"
	AccountsFileName   = "accounts.conf"
	// RouteUser is the account the nodes use to connect their routes.
	RouteUser = "ekem-route"
	// DefaultMaxPending is the outbound buffer per client (see node.conf.tmpl).
	DefaultMaxPending = 1 << 30
	// BcryptCost of the password hashes in accounts.conf. Passwords are 256
	// random bits, so the cost does not protect them; it only sets what a
	// node pays per CONNECT (like the 101 PBKDF2 iterations of Mosquitto's
	// password file).
	BcryptCost = 4
)

// Sentinel errors.
var (
	// ErrRender: an option is invalid.
	ErrRender = errors.New("natsconf: cannot render configuration")
	// ErrDotInDeviceID: NATS maps MQTT topic levels to subject tokens, which
	// '.' separates; NATS 2.9 refuses such topics, so a device id with '.'
	// cannot be served by the cluster.
	ErrDotInDeviceID = errors.New("natsconf: device id contains '.'")
)

// NodeOptions is one node's configuration. Listen addresses are host:port.
type NodeOptions struct {
	ServerName    string   // unique per node, e.g. "nats-1"
	ClusterName   string   // default "ekem"
	ClientListen  string   // core NATS (default 127.0.0.1:4222)
	HTTPListen    string   // monitoring (default 127.0.0.1:8222)
	MQTTListen    string   // MQTT (default 0.0.0.0:1883)
	ClusterListen string   // routes (default 0.0.0.0:6222)
	Routes        []string // host:port of every node's cluster listener, this node's included
	StoreDir      string   // JetStream store (default /data)
	AccountsFile  string   // file name next to the node's file (default accounts.conf)
	RoutePassword string   // the nodes' shared route password (required)
	TLSCert       string   // if set, MQTT over TLS with this certificate...
	TLSKey        string   // ...and key
	MaxPending    int64    // default DefaultMaxPending
}

// RenderNode renders one node's configuration.
func RenderNode(o NodeOptions) (string, error) {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&o.ClusterName, ShippedClusterName)
	def(&o.ClientListen, "127.0.0.1:"+strconv.Itoa(ShippedClientPort))
	def(&o.HTTPListen, "127.0.0.1:"+strconv.Itoa(ShippedHTTPPort))
	def(&o.MQTTListen, "0.0.0.0:"+strconv.Itoa(ShippedMQTTPort))
	def(&o.ClusterListen, "0.0.0.0:"+strconv.Itoa(ShippedClusterPort))
	def(&o.StoreDir, ShippedStoreDir)
	def(&o.AccountsFile, AccountsFileName)
	if o.MaxPending == 0 {
		o.MaxPending = DefaultMaxPending
	}
	if err := o.validate(); err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := nodeTmpl.Execute(&b, struct {
		NodeOptions
		RouteUser string
	}{o, RouteUser}); err != nil {
		return "", fmt.Errorf("%w: %w", ErrRender, err)
	}
	return b.String(), nil
}

func (o NodeOptions) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrRender}, a...)...)
	}
	if !plainToken(o.ServerName) || !plainToken(o.ClusterName) {
		return bad("server name %q and cluster name %q must be 1-64 of [A-Za-z0-9_-]", o.ServerName, o.ClusterName)
	}
	for _, a := range append([]string{o.ClientListen, o.HTTPListen, o.MQTTListen, o.ClusterListen}, o.Routes...) {
		if err := checkHostPort(a); err != nil {
			return bad("%v", err)
		}
	}
	if len(o.Routes) == 0 {
		return bad("no routes: list every node's cluster address")
	}
	if len(o.RoutePassword) < 16 || !plainPassword(o.RoutePassword) {
		return bad("route password must be at least 16 of [A-Za-z0-9_-]")
	}
	for _, p := range []string{o.StoreDir, o.TLSCert, o.TLSKey} {
		if strings.ContainsAny(p, "\"\\\n\r") {
			return bad("path %q has a quote, backslash or newline", p)
		}
	}
	if !plainFileName(o.AccountsFile) {
		return bad("accounts file %q must be a plain file name", o.AccountsFile)
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return bad("TLS needs both a certificate and a key")
	}
	if o.MaxPending < 0 {
		return bad("max pending %d is negative", o.MaxPending)
	}
	return nil
}

func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("address %q: %w", a, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || host == "" || strings.ContainsAny(host, " \"\\\n\r@/:") && net.ParseIP(host) == nil {
		return fmt.Errorf("address %q: want host:port", a)
	}
	return nil
}

func plainToken(s string) bool { return len(s) <= 64 && tokenChars(s) }

func plainPassword(s string) bool { return len(s) <= 256 && tokenChars(s) }

// tokenChars reports whether s is non-empty and all of [A-Za-z0-9_-].
func tokenChars(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func plainFileName(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// ValidateDeviceID checks a device id for the cluster: what
// creds.ValidateDeviceID accepts, without '.'. NATS turns each MQTT topic
// level into a subject token and '.' separates tokens; NATS 2.9 closes the
// connection of a client that publishes or subscribes to a topic with '.'
// (README.md, "Device ids"). Refusing here, when the accounts are made, is
// clearer than a fleet whose devices cannot publish.
func ValidateDeviceID(id string) error {
	if err := creds.ValidateDeviceID(id); err != nil {
		return err
	}
	if strings.Contains(id, ".") {
		return fmt.Errorf("%w: %q: NATS maps MQTT topic levels to subject tokens, which '.' separates; "+
			"use an id without '.' (for example %q) or serve this fleet from Mosquitto", ErrDotInDeviceID, id, strings.ReplaceAll(id, ".", "-"))
	}
	return nil
}
