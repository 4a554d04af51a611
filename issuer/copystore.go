package issuer

import (
	"errors"
	"fmt"
)

// ErrStoreNotEmpty: CopyStore's destination already holds state.
var ErrStoreNotEmpty = errors.New("issuer: the destination store is not empty")

// bulkPutter is implemented by engine transactions that write many
// device records at once faster than one PutDevice each.
type bulkPutter interface {
	putDevices(recs []*record) error
}

// CopyStore copies everything src holds (device records, last epoch and
// its EpochInfo, roots, key rotations, the audit log) into dst, which must
// be empty, in one transaction of dst: interrupted, it copies nothing.
// It moves an issuer from one engine to another (bbolt to PostgreSQL);
// every issuer of both must be stopped. It returns how many device records
// it copied.
func CopyStore(dst, src Store) (devices int, err error) {
	err = dst.Update(func(tx Tx) error {
		last, err := tx.LastEpoch()
		if err != nil {
			return err
		}
		n := 0
		if err := tx.Devices(func(*record) error { n++; return errStop }); err != nil && !errors.Is(err, errStop) {
			return err
		}
		roots, err := tx.Roots()
		if err != nil {
			return err
		}
		if last != 0 || n != 0 || len(roots) != 0 {
			return fmt.Errorf("%w: %s: last epoch %d, %d roots, devices: %v", ErrStoreNotEmpty, dst.Name(), last, len(roots), n > 0)
		}
		return src.View(func(s ReadTx) error {
			chunk := make([]*record, 0, devicesChunk)
			flush := func() error {
				defer func() { chunk = chunk[:0] }()
				if bp, ok := tx.(bulkPutter); ok && len(chunk) > 0 {
					return bp.putDevices(chunk)
				}
				for _, r := range chunk {
					if err := tx.PutDevice(r); err != nil {
						return err
					}
				}
				return nil
			}
			if err := s.Devices(func(r *record) error {
				r.rev = 0 // another store's revision
				chunk = append(chunk, r)
				devices++
				if len(chunk) == devicesChunk {
					return flush()
				}
				return nil
			}); err != nil {
				return err
			}
			if err := flush(); err != nil {
				return err
			}
			rots, err := s.Rotations()
			if err != nil {
				return err
			}
			for _, r := range rots {
				if err := tx.AddRotation(r); err != nil {
					return err
				}
			}
			if err := s.Audit(func(e AuditEntry) error { return tx.AppendAudit(e) }); err != nil {
				return err
			}
			last, err := s.LastEpoch()
			if err != nil || last == 0 {
				return err
			}
			roots, err := s.Roots()
			if err != nil {
				return err
			}
			info, err := s.EpochInfo()
			if err != nil {
				return err
			}
			return tx.Recover(last, roots, info)
		})
	})
	if err != nil {
		return 0, err
	}
	return devices, nil
}

var errStop = errors.New("stop")
