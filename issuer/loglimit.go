package issuer

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Log rate limits (DESIGN.md "Identity on the broker": one account cannot
// flood the issuer's log). Every message the issuer refuses is still
// counted; only its log line is limited. The first lines of each device and
// reason show (a burst), then one line per interval; a global bucket bounds
// the lines of many devices at once. The key includes the reason so that a
// flood of one kind never hides the first record of another kind. Suppressed lines are counted (log_lines_suppressed,
// ekem_log_lines_suppressed_total) and summarised in one line per
// logSummaryEvery, with the count per reason.
const (
	logBurstPerDevice = 5
	logEveryPerDevice = 30 * time.Second
	logBurstTotal     = 200
	logEveryTotal     = 100 * time.Millisecond // 10 lines/s over every device
	logSummaryEvery   = 10 * time.Second
	// maxLogKeys bounds the per-device buckets kept; beyond it the buckets
	// are dropped and start full again (the global bucket still bounds
	// the rate).
	maxLogKeys = 4096
)

// tokenBucket allows burst events, then one per every.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

func (b *tokenBucket) take(now time.Time, burst float64, every time.Duration) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(burst, b.tokens+float64(d)/float64(every))
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// logLimiter decides which log lines to write. The zero value is ready; its
// methods are safe for concurrent use. It is pure apart from its state: the
// time is a parameter.
type logLimiter struct {
	mu      sync.Mutex
	total   tokenBucket
	devices map[string]*tokenBucket
	// suppressed since the last summary, by reason, and the devices
	// concerned.
	suppressed map[string]uint64
	sdevices   map[string]struct{}
	scheduled  bool
}

// allow reports whether a line about device (empty: not attributable to one)
// for reason (one of the issuer's own reason strings) may be written at now. When it may not, the line is counted
// for the next summary; first reports whether this is the first suppressed
// line since the last summary (the caller then schedules one).
func (l *logLimiter) allow(device, reason string, now time.Time) (ok, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.devices == nil || len(l.devices) >= maxLogKeys {
		l.devices = map[string]*tokenBucket{}
	}
	key := device + "\x00" + reason
	b := l.devices[key]
	if b == nil {
		b = &tokenBucket{}
		l.devices[key] = b
	}
	// Both buckets are charged only when both allow: a device's refused
	// lines do not spend the fleet's budget.
	deviceOK := b.take(now, logBurstPerDevice, logEveryPerDevice)
	if deviceOK && l.total.take(now, logBurstTotal, logEveryTotal) {
		return true, false
	}
	if deviceOK {
		b.tokens++ // give the device its token back: the global bucket refused
	}
	if l.suppressed == nil {
		l.suppressed, l.sdevices = map[string]uint64{}, map[string]struct{}{}
	}
	l.suppressed[reason]++
	if len(l.sdevices) < maxLogKeys {
		l.sdevices[device] = struct{}{}
	}
	first = !l.scheduled
	l.scheduled = true
	return false, first
}

// logSummary is what was suppressed since the last summary.
type logSummary struct {
	total    uint64
	devices  int
	byReason map[string]uint64
}

// summary returns and resets what was suppressed.
func (l *logLimiter) summary() logSummary {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := logSummary{byReason: l.suppressed, devices: len(l.sdevices)}
	for _, n := range l.suppressed {
		s.total += n
	}
	l.suppressed, l.sdevices, l.scheduled = nil, nil, false
	return s
}

// logLimited writes one log line about a message from device (empty if the
// message names none) unless the device or the issuer as a whole is over its
// log budget; a suppressed line is counted, and summarised logSummaryEvery
// later in one line.
func (i *Issuer) logLimited(level slog.Level, device, reason, msg string, attrs ...any) {
	ok, first := i.logs.allow(device, reason, i.cfg.Now())
	if ok {
		i.log.Log(context.Background(), level, msg, attrs...)
		return
	}
	i.count(cLogLinesSuppressed, 1)
	if first {
		time.AfterFunc(logSummaryEvery, i.logSuppressedSummary)
	}
}

// logSuppressedSummary writes the summary of suppressed lines. After Close
// it only resets the counts.
func (i *Issuer) logSuppressedSummary() {
	s := i.logs.summary()
	if s.total == 0 || i.isClosed() {
		return
	}
	reasons := make([]string, 0, len(s.byReason))
	for r := range s.byReason {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	attrs := make([]any, 0, len(reasons))
	for _, r := range reasons {
		attrs = append(attrs, slog.Uint64(r, s.byReason[r]))
	}
	i.log.Log(context.Background(), slog.LevelWarn, "log lines suppressed: too many refused messages",
		"reason", "log_rate_limited", "suppressed", s.total, "devices", s.devices,
		"window", logSummaryEvery.String(), slog.Group("by_reason", attrs...))
}
