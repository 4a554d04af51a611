package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/device/keyapi"
)

// api holds run's local key API flags (device/keyapi).
type api struct {
	addr, mode, group string
}

func (o *opts) apiFlags(defs map[string]func()) {
	defs["api"] = func() {
		o.str(&o.api.addr, "api", "", "serve the local key API on unix:PATH (HTTP + JSON; README, Keys for applications)")
	}
	defs["api-mode"] = func() {
		o.str(&o.api.mode, "api-mode", "0600", "permission bits of the key API socket: 0600 (the agent's user) or 0660 (and -api-group)")
	}
	defs["api-group"] = func() {
		o.str(&o.api.group, "api-group", "", "group (name or gid) the key API socket is given, for -api-mode 0660")
	}
}

// options checks the flags and returns the socket path and Listen's
// options; path is empty without -api.
func (p api) options() (string, keyapi.Options, error) {
	var o keyapi.Options
	if p.addr == "" {
		if p.group != "" {
			return "", o, fmt.Errorf("%w: -api-group needs -api", errUsage)
		}
		return "", o, nil
	}
	path, ok := strings.CutPrefix(p.addr, "unix:")
	if !ok || path == "" {
		return "", o, fmt.Errorf("%w: -api %q: the key API listens on unix:PATH only", errUsage, p.addr)
	}
	mode, err := strconv.ParseUint(p.mode, 8, 32)
	if err != nil || (mode != 0o600 && mode != 0o660 && mode != 0o640) {
		return "", o, fmt.Errorf("%w: -api-mode %q: 0600, 0640 or 0660", errUsage, p.mode)
	}
	o.Mode = os.FileMode(mode)
	if p.group != "" {
		gid, err := strconv.Atoi(p.group)
		if err != nil {
			g, lerr := user.LookupGroup(p.group)
			if lerr != nil {
				return "", o, fmt.Errorf("%w: -api-group %q: %v", errUsage, p.group, lerr)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
		if gid < 0 {
			return "", o, fmt.Errorf("%w: -api-group %q", errUsage, p.group)
		}
		o.SetGroup, o.GID = true, gid
	}
	return path, o, nil
}

// serve starts the key API if -api is set; stop closes it.
func (p api) serve(a *device.Agent, log *slog.Logger) (stop func(), err error) {
	path, o, err := p.options()
	if err != nil || path == "" {
		return func() {}, err
	}
	o.Logger = log
	s, err := keyapi.Listen(path, a, o)
	if err != nil {
		return nil, err
	}
	return func() { s.Close() }, nil
}
