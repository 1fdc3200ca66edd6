package dingtalk

// fields are the top-level members of a DingTalk answer that matter to a
// retrying proxy. Values are raw: a number's digits or a string's unquoted
// bytes (escapes are kept as written; none of these fields need them).
type fields struct {
	errcode, subCode, errmsg, code, status, wait, requestID, message []byte
	hasErrcode, hasCode, hasStatus                                   bool
}

// scanTop reads the members of the top-level JSON object in b without
// decoding the rest of the document, and without allocating. It works on a
// prefix of a longer document: members read before the cut are kept. It
// reports whether b starts like a JSON object.
func scanTop(b []byte, f *fields) bool {
	it, ok := newMembers(b)
	if !ok {
		return false
	}
	for {
		key, val, _, ok := it.next()
		if !ok {
			return true
		}
		switch string(key) { // the compiler does not allocate for this conversion
		case "errcode":
			f.errcode, f.hasErrcode = val, true
		case "sub_code", "subcode":
			f.subCode = val
		case "errmsg":
			f.errmsg = val
		case "message":
			f.message = val
		case "code":
			f.code, f.hasCode = val, true
		case "status":
			f.status, f.hasStatus = val, true
		case "wait":
			f.wait = val
		case "request_id", "requestid", "requestId":
			f.requestID = val
		}
	}
}

// members iterates over the members of a top-level JSON object, tolerating a
// document cut short: iteration ends at the first member it cannot read whole.
type members struct {
	b []byte
	i int
}

func newMembers(b []byte) (members, bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return members{}, false
	}
	return members{b: b, i: i + 1}, true
}

// next returns the next member's key and raw value (a string's bytes without
// quotes, or a number, literal, object or array as written).
func (m *members) next() (key, val []byte, isString, ok bool) {
	b := m.b
	i := skipSpace(b, m.i)
	if i < len(b) && b[i] == ',' {
		i = skipSpace(b, i+1)
	}
	if i >= len(b) || b[i] != '"' {
		return nil, nil, false, false
	}
	key, n, ok := readString(b, i)
	if !ok {
		return nil, nil, false, false
	}
	i = skipSpace(b, n)
	if i >= len(b) || b[i] != ':' {
		return nil, nil, false, false
	}
	i = skipSpace(b, i+1)
	if i >= len(b) {
		return nil, nil, false, false
	}
	if b[i] == '"' {
		val, n, ok = readString(b, i)
		isString = true
	} else {
		n, ok = skipValue(b, i)
		val = b[i:n]
	}
	if !ok {
		return nil, nil, false, false
	}
	m.i = n
	return key, val, isString, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// readString returns the bytes between the quotes of the string at b[i] and
// the index after the closing quote.
func readString(b []byte, i int) ([]byte, int, bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return b[i+1 : j], j + 1, true
		}
	}
	return nil, len(b), false
}

// skipValue returns the index after the value (not a string) at b[i]:
// a number or literal, or a whole object or array.
func skipValue(b []byte, i int) (int, bool) {
	if b[i] != '{' && b[i] != '[' {
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' &&
			b[j] != '\n' && b[j] != '\r' && b[j] != '\t' {
			j++
		}
		return j, j < len(b)
	}
	depth := 0
	for j := i; j < len(b); j++ {
		switch b[j] {
		case '"':
			_, n, ok := readString(b, j)
			if !ok {
				return len(b), false
			}
			j = n - 1
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return j + 1, true
			}
		}
	}
	return len(b), false
}

// atoi parses an optionally signed decimal integer, as DingTalk writes errcode
// either as a number or as a string of digits.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 12 {
		return 0, false
	}
	neg := false
	if b[0] == '-' {
		neg, b = true, b[1:]
		if len(b) == 0 {
			return 0, false
		}
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}
