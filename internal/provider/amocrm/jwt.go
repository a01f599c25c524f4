package amocrm

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"strings"
	"time"
)

type jwtClaims struct {
	exp    time.Time // zero when absent
	scopes []string
	// aud is the client_id of the integration the token was issued to.
	aud string
	// accountID, baseDomain (amocrm.ru, amocrm.com, kommo.com) and
	// apiDomain (api-b.amocrm.ru; only in tokens issued after 21 August
	// 2024) say which account the token belongs to and where it lives.
	accountID  int64
	baseDomain string
	apiDomain  string
}

// decodeJWT reads the payload of a JWT WITHOUT verifying its signature: the
// claims only cross-check what the token endpoint said (or, for a long-lived
// token, give its expiry); AmoCRM itself judges the token on every call.
// ok is false when tok is not a JWT with a JSON object payload.
func decodeJWT(tok string) (jwtClaims, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || parts[1] == "" {
		return jwtClaims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return jwtClaims{}, false
	}
	var raw struct {
		Exp        json.Number `json:"exp"`
		Scopes     any         `json:"scopes"`
		Aud        any         `json:"aud"`
		AccountID  json.Number `json:"account_id"`
		BaseDomain string      `json:"base_domain"`
		APIDomain  string      `json:"api_domain"`
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return jwtClaims{}, false
	}
	var c jwtClaims
	if raw.Exp != "" {
		if f, err := raw.Exp.Float64(); err == nil && f > 0 && f < math.MaxInt32*4 {
			c.exp = time.Unix(int64(f), 0)
		}
	}
	switch a := raw.Aud.(type) {
	case string:
		c.aud = a
	case []any:
		if len(a) == 1 {
			c.aud, _ = a[0].(string)
		}
	}
	if n, err := raw.AccountID.Int64(); err == nil && n > 0 {
		c.accountID = n
	}
	c.baseDomain = strings.ToLower(strings.TrimSpace(raw.BaseDomain))
	c.apiDomain = strings.ToLower(strings.TrimSpace(raw.APIDomain))
	if list, ok := raw.Scopes.([]any); ok {
		scopes := make([]string, 0, len(list))
		for _, s := range list {
			str, ok := s.(string)
			if !ok {
				scopes = nil
				break
			}
			scopes = append(scopes, str)
		}
		c.scopes = scopes
	}
	return c, true
}
