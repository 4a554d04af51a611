package issuer

import (
	"context"
	"time"
)

// Several issuer instances share one store (the PostgreSQL engine), one of
// them the leader (DESIGN "Issuer state: … Several issuer instances, one
// leader"). The leader holds a lease with a fencing token: the token grows
// at every acquisition, and every epoch commit compares it, with the last
// epoch, in the transaction that writes the epoch's records
// (EpochCommit.Token). A deposed or paused leader can therefore never
// commit an epoch, and since an epoch is published only after its commit,
// never publish one. Independently, the leader stops publishing as soon
// as its lease's local deadline (Lease.Until) passes without a renewal
// (cluster.go).

// Lease is a held leader lease.
type Lease struct {
	// Token is the fencing token (EpochCommit.Token).
	Token uint64
	// Holder names the instance holding it.
	Holder string
	// Until is the local deadline of the lease: it was taken before the
	// request that set the lease's expiry, so it passes no later than the
	// store's expiry. Past it, the holder must act as if it lost the lease.
	Until time.Time
}

// Valid reports whether the lease's local deadline is still ahead.
func (l Lease) Valid() bool { return l.Token != 0 && time.Now().Before(l.Until) }

// LeaseStatus is the lease as the store holds it.
type LeaseStatus struct {
	Token     uint64
	Holder    string
	Acquired  time.Time
	Live      bool
	Remaining time.Duration
}

// Leaser is implemented by the engines several issuer instances can share
// (PostgreSQL); bbolt, held by one process, has no lease.
type Leaser interface {
	// AcquireLease takes the lease for holder, for ttl, if it is free or
	// expired, with a new token; ok is false if another live lease holds
	// it.
	AcquireLease(ctx context.Context, holder string, ttl time.Duration) (l Lease, ok bool, err error)
	// RenewLease extends l for ttl from now, if it is still current and
	// unexpired; else an error wrapping ErrNotLeader.
	RenewLease(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// ReleaseLease ends l at once (a standby can take over without
	// waiting for it to expire), if it is still current.
	ReleaseLease(ctx context.Context, l Lease) error
	// LeaseStatus reads the lease.
	LeaseStatus(ctx context.Context) (LeaseStatus, error)
}
