package adminsock

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/entropykem/entropykem/issuer"
)

// maxEnrollBody bounds an enrollment request: an id (≤ 64 bytes) and a
// base64 key hash (44 bytes) with their JSON per device.
const maxEnrollBody = 160 * issuer.MaxEnrollments

type enrollBody struct {
	Reason  string              `json:"reason"`
	Entries []issuer.Enrollment `json:"entries"`
}

// enroll imports devices into the running issuer (issuer.Admin.Enroll).
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	var body enrollBody
	dec := json.NewDecoder(io.LimitReader(r.Body, maxEnrollBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		s.fail(w, fmt.Errorf("%w: body: %w", errBadRequest, err))
		return
	}
	op := operator(r, body.Reason)
	res, err := s.admin.Enroll(body.Entries, op)
	if err != nil {
		if errors.Is(err, issuer.ErrBadEnrollment) {
			err = fmt.Errorf("%w: %w", errBadRequest, err)
		}
		s.fail(w, err)
		return
	}
	s.log.Info("admin action", "action", "enroll", "devices", len(body.Entries), "actor", op.Actor)
	reply(w, http.StatusOK, res)
}

// Enroll asks the running issuer to import entries.
func (c *Client) Enroll(entries []issuer.Enrollment, op issuer.Operator) (issuer.EnrollResult, error) {
	var res issuer.EnrollResult
	err := c.do(http.MethodPost, "/v1/enroll", enrollBody{Reason: op.Reason, Entries: entries}, &res)
	return res, err
}

// Deny asks the running issuer to drop the registration id holds for
// approval.
func (c *Client) Deny(id string, op issuer.Operator) error { return c.act("deny", id, op) }
