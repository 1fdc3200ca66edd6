package config

import (
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spf13/viper"
)

// convert accepts a value only when viper's decoder, with decodeHook, turns it
// into the same value: the walk and UnmarshalExact must never disagree.
func TestConvertAgreesWithDecoder(t *testing.T) {
	t.Parallel()
	raws := []any{
		nil, "", "0", "1", "010", "0x10", "-1", "1.5", "abc", "true", "30", "30s", "-1s", "1m30s",
		"NaN", "4294967296", 0, 1, -1, 4294967296, 1.0, 1.5, -2.0, 1e6, true, false,
		time.Second, []any{1}, map[string]any{"a": 1},
	}
	types := []reflect.Type{
		reflect.TypeFor[string](), secretType, durationType, reflect.TypeFor[int](),
		reflect.TypeFor[int64](), reflect.TypeFor[uint32](), reflect.TypeFor[float64](),
		reflect.TypeFor[bool](),
	}
	for _, typ := range types {
		for _, raw := range raws {
			if raw == nil {
				continue // null means unset; the walk skips it
			}
			got, msg := convert(raw, typ)
			if msg != "" {
				continue
			}
			v := viper.New()
			v.Set("x", raw)
			out := reflect.New(typ)
			if err := v.UnmarshalKey("x", out.Interface(), viper.DecodeHook(decodeHook)); err != nil {
				t.Errorf("convert(%#v, %s) = %#v, but the decoder fails: %v", raw, typ, got, err)
				continue
			}
			want := reflect.ValueOf(got).Convert(typ).Interface()
			if diff := cmp.Diff(want, out.Elem().Interface(), cmpopts.EquateNaNs()); diff != "" {
				t.Errorf("convert(%#v, %s) disagrees with the decoder (-convert +decoder):\n%s", raw, typ, diff)
			}
		}
	}
}

func TestConvertRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw  any
		typ  reflect.Type
		want string
	}{
		{true, reflect.TypeFor[string](), "cannot parse true as string"},
		{time.Date(2001, 12, 14, 0, 0, 0, 0, time.UTC), reflect.TypeFor[string](), "cannot parse 2001-12-14T00:00:00Z as string"},
		{[]any{"x"}, secretType, "cannot parse value as string"},
		{"abc", reflect.TypeFor[int](), `cannot parse "abc" as int`},
		{"", reflect.TypeFor[int](), `cannot parse "" as int`},
		{1.5, reflect.TypeFor[int64](), "cannot parse 1.5 as int"},
		{true, reflect.TypeFor[int](), "cannot parse true as int"},
		{-1, reflect.TypeFor[uint32](), "cannot parse -1 as non-negative int"},
		{"-1", reflect.TypeFor[uint32](), `cannot parse "-1" as non-negative int`},
		{4294967296, reflect.TypeFor[uint32](), "cannot parse 4294967296 as non-negative int"},
		{"x", reflect.TypeFor[float64](), `cannot parse "x" as number`},
		{true, reflect.TypeFor[float64](), "cannot parse true as number"},
		{1, reflect.TypeFor[bool](), "cannot parse 1 as bool"},
		{"yes", reflect.TypeFor[bool](), `cannot parse "yes" as bool`},
		{30, durationType, `cannot parse 30 as duration (missing unit, e.g. "30s")`},
		{"1.5", durationType, `cannot parse "1.5" as duration (missing unit, e.g. "1.5s")`},
		{"soon", durationType, `cannot parse "soon" as duration`},
		{map[string]any{}, durationType, "cannot parse a map as duration"},
		{"256MB", byteSizeType, `cannot parse "256MB" as a size (an integer of bytes, or with a unit: B, KiB, MiB, GiB)`},
		{"1.5GiB", byteSizeType, `cannot parse "1.5GiB" as a size (an integer of bytes, or with a unit: B, KiB, MiB, GiB)`},
		{"99999999999GiB", byteSizeType, `cannot parse "99999999999GiB" as a size (an integer of bytes, or with a unit: B, KiB, MiB, GiB)`},
		{1.5, byteSizeType, "cannot parse 1.5 as int"},
	}
	for _, tt := range tests {
		if _, msg := convert(tt.raw, tt.typ); msg != tt.want {
			t.Errorf("convert(%#v, %s) = %q, want %q", tt.raw, tt.typ, msg, tt.want)
		}
	}
}

func TestByteSize(t *testing.T) {
	t.Parallel()
	for raw, want := range map[any]ByteSize{
		"512": 512, "512B": 512, "64KiB": 64 << 10, "256MiB": 256 << 20, "256 MiB": 256 << 20, "2GiB": 2 << 30, 1048576: 1 << 20,
	} {
		got, msg := convert(raw, byteSizeType)
		if msg != "" || got != want {
			t.Errorf("convert(%#v) = %v, %q; want %v", raw, got, msg, want)
		}
	}
	for n, want := range map[ByteSize]string{256 << 20: "256MiB", 1 << 30: "1GiB", 1536: "1536", 3 << 10: "3KiB", 0: "0"} {
		if got := n.String(); got != want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(n), got, want)
		}
	}
}
