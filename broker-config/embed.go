// Package brokerconfig ships the reference Mosquitto 2 configuration of
// entropykem (mosquitto.conf and the ACL file, see README.md) and renders it
// for other hosts and for tests.
//
// Rendering changes only a closed set of lines: the two listener lines (port,
// and the TLS listener's bind address), the directories of the password, ACL,
// certificate and persistence files, and an optional "user" line. Every other
// line, in particular every security setting, is copied byte for byte, so a
// test that runs a rendered broker exercises exactly the shipped policy.
package brokerconfig

import (
	_ "embed"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

//go:embed mosquitto.conf
var mosquittoConf string

//go:embed acl
var aclFile string

// Reserved account names. The ACL grants these two accounts their own rules;
// no device may use either name (see creds.ValidateDeviceID).
const (
	IssuerAccount  = "ekem-issuer"
	MonitorAccount = "ekem-monitor"
)

// Values in the shipped mosquitto.conf that RenderConfig may replace.
const (
	ShippedConfigDir    = "/mosquitto/config/"
	ShippedCertDir      = "/mosquitto/certs/"
	ShippedDataDir      = "/mosquitto/data/"
	ShippedTLSPort      = 8883
	ShippedPasswordPort = 1883
	// PasswordListenerHost is the password listener's bind address; it is
	// never rendered to anything else.
	PasswordListenerHost = "127.0.0.1"
)

// File names inside the rendered directories.
const (
	PasswordFileName = "passwd"
	ACLFileName      = "acl"
	CAFileName       = "ca.crt"
	CRLFileName      = "crl.pem"
	ServerCertName   = "server.crt"
	ServerKeyName    = "server.key"
)

// ErrRender reports that the shipped configuration could not be rendered:
// either an option is invalid or the shipped file no longer has the shape the
// renderer expects (which a test catches).
var ErrRender = errors.New("brokerconfig: cannot render configuration")

// MosquittoConf returns the shipped mosquitto.conf unchanged.
func MosquittoConf() string { return mosquittoConf }

// ACL returns the shipped ACL file unchanged. It has no placeholders: it keys
// on %u and on the reserved account names, not on paths or ports.
func ACL() string { return aclFile }

// RenderOptions says what RenderConfig changes. Zero fields keep the shipped
// value, so RenderConfig(RenderOptions{}) returns the shipped file.
type RenderOptions struct {
	ConfigDir    string // replaces /mosquitto/config/ (passwd, acl)
	CertDir      string // replaces /mosquitto/certs/ (ca.crt, crl.pem, server.crt, server.key)
	DataDir      string // replaces /mosquitto/data/ (persistence)
	PasswordPort int    // replaces 1883; the listener stays bound to 127.0.0.1
	TLSPort      int    // replaces 8883
	TLSHost      string // binds the TLS listener to this address (shipped: all)
	// User, if set, appends "user <User>": Mosquitto started as root drops
	// privileges to the "mosquitto" user unless told otherwise.
	User string
}

// RenderConfig returns the shipped mosquitto.conf with the lines named by o
// replaced. It fails with ErrRender if an option is malformed or if a line it
// must replace is missing or repeated in the shipped file.
func RenderConfig(o RenderOptions) (string, error) {
	if err := o.validate(); err != nil {
		return "", err
	}
	r := renderer{o: o, seen: map[string]int{}}
	lines := strings.SplitAfter(mosquittoConf, "\n")
	var b strings.Builder
	for _, line := range lines {
		out, err := r.line(line)
		if err != nil {
			return "", err
		}
		b.WriteString(out)
	}
	for _, key := range requiredLines {
		if r.seen[key] != 1 {
			return "", fmt.Errorf("%w: shipped file has %d %q lines, want 1", ErrRender, r.seen[key], key)
		}
	}
	if o.User != "" {
		if r.seen["user"] != 0 {
			return "", fmt.Errorf("%w: shipped file already sets user", ErrRender)
		}
		b.WriteString("\n# Added by brokerconfig.RenderConfig.\nuser " + o.User + "\n")
	}
	return b.String(), nil
}

// requiredLines are the keys of the lines RenderConfig replaces; each must
// appear exactly once in the shipped file.
var requiredLines = []string{
	"listener tls", "listener password", "password_file", "acl_file",
	"cafile", "certfile", "keyfile", "crlfile", "persistence_location",
}

type renderer struct {
	o    RenderOptions
	seen map[string]int
}

// line renders one line of the shipped file, newline included.
func (r *renderer) line(line string) (string, error) {
	body := strings.TrimRight(line, "\r\n")
	nl := line[len(body):]
	fields := strings.Fields(body)
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return line, nil
	}
	key := fields[0]
	switch key {
	case "listener":
		return r.listener(body, nl)
	case "password_file", "acl_file":
		return r.path(key, fields, ShippedConfigDir, r.o.ConfigDir, nl)
	case "cafile", "certfile", "keyfile", "crlfile":
		return r.path(key, fields, ShippedCertDir, r.o.CertDir, nl)
	case "persistence_location":
		r.seen[key]++
		if len(fields) != 2 || fields[1] != ShippedDataDir {
			return "", fmt.Errorf("%w: unexpected line %q", ErrRender, body)
		}
		if r.o.DataDir == "" {
			return line, nil
		}
		return key + " " + withSlash(r.o.DataDir) + nl, nil
	case "user":
		r.seen[key]++
	}
	return line, nil
}

func (r *renderer) listener(body, nl string) (string, error) {
	switch body {
	case "listener " + strconv.Itoa(ShippedTLSPort):
		r.seen["listener tls"]++
		port := ShippedTLSPort
		if r.o.TLSPort != 0 {
			port = r.o.TLSPort
		}
		out := "listener " + strconv.Itoa(port)
		if r.o.TLSHost != "" {
			out += " " + r.o.TLSHost
		}
		return out + nl, nil
	case "listener " + strconv.Itoa(ShippedPasswordPort) + " " + PasswordListenerHost:
		r.seen["listener password"]++
		port := ShippedPasswordPort
		if r.o.PasswordPort != 0 {
			port = r.o.PasswordPort
		}
		return "listener " + strconv.Itoa(port) + " " + PasswordListenerHost + nl, nil
	}
	return "", fmt.Errorf("%w: unexpected listener line %q", ErrRender, body)
}

// path replaces the shipped directory prefix of a file directive.
func (r *renderer) path(key string, fields []string, shippedDir, dir, nl string) (string, error) {
	r.seen[key]++
	if len(fields) != 2 || !strings.HasPrefix(fields[1], shippedDir) {
		return "", fmt.Errorf("%w: %s is not under %s", ErrRender, key, shippedDir)
	}
	if dir == "" {
		return key + " " + fields[1] + nl, nil // == the shipped line, checked by a test
	}
	return key + " " + filepath.Join(dir, strings.TrimPrefix(fields[1], shippedDir)) + nl, nil
}

func withSlash(dir string) string {
	return strings.TrimRight(dir, "/") + "/"
}

func (o RenderOptions) validate() error {
	for _, d := range []string{o.ConfigDir, o.CertDir, o.DataDir} {
		if d == "" {
			continue
		}
		if !filepath.IsAbs(d) || !plainValue(d) {
			return fmt.Errorf("%w: directory %q must be absolute, without spaces or control characters", ErrRender, d)
		}
	}
	for _, p := range []int{o.PasswordPort, o.TLSPort} {
		if p < 0 || p > 65535 {
			return fmt.Errorf("%w: port %d out of range", ErrRender, p)
		}
	}
	if o.PasswordPort != 0 && o.PasswordPort == o.TLSPort {
		return fmt.Errorf("%w: both listeners on port %d", ErrRender, o.PasswordPort)
	}
	if o.TLSHost != "" && !plainValue(o.TLSHost) {
		return fmt.Errorf("%w: invalid TLS host %q", ErrRender, o.TLSHost)
	}
	if o.User != "" && !plainValue(o.User) {
		return fmt.Errorf("%w: invalid user %q", ErrRender, o.User)
	}
	return nil
}

// plainValue reports whether s can stand as one Mosquitto config value:
// printable ASCII without spaces or '#'.
func plainValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return s != ""
}
