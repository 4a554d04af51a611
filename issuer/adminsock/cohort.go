package adminsock

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/wire"
)

// POST /v1/devices/{id}/cohort, body {"cohort": "…", "reason": "…"}: the
// device's cohort membership (issuer.CohortAdmin); an empty cohort removes
// it from its cohort. Audited as "cohort".

type cohortBody struct {
	Cohort string `json:"cohort"`
	Reason string `json:"reason"`
}

func (s *Server) cohort(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := wire.ValidateDeviceID(id); err != nil {
		s.fail(w, fmt.Errorf("%w: %w", errBadRequest, err))
		return
	}
	ca, ok := s.admin.(issuer.CohortAdmin)
	if !ok {
		s.fail(w, errors.New("adminsock: this issuer does not manage cohorts"))
		return
	}
	var body cohortBody
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		s.fail(w, fmt.Errorf("%w: body: %w", errBadRequest, err))
		return
	}
	if body.Cohort != "" {
		if err := wire.ValidateLabel(body.Cohort); err != nil {
			s.fail(w, fmt.Errorf("%w: cohort: %w", errBadRequest, err))
			return
		}
	}
	op := operator(r, body.Reason)
	if err := ca.SetCohort(id, body.Cohort, op); err != nil {
		s.fail(w, err)
		return
	}
	s.log.Info("admin action", "action", "cohort", "device", id, "cohort", body.Cohort, "actor", op.Actor)
	reply(w, http.StatusOK, struct {
		Done string `json:"done"`
	}{"cohort"})
}

// SetCohort asks the running issuer to change device id's cohort.
func (c *Client) SetCohort(id, cohort string, op issuer.Operator) error {
	if err := wire.ValidateDeviceID(id); err != nil {
		return err
	}
	return c.do(http.MethodPost, "/v1/devices/"+id+"/cohort", cohortBody{Cohort: cohort, Reason: op.Reason}, nil)
}

var _ issuer.CohortAdmin = (*Client)(nil)
