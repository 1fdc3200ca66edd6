package outbox

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
)

// The second pass of a repair: when the walk of the damaged file's tree
// met damage (or bbolt could not open the file at all), every leaf page of
// the file is read as bbolt lays it out, whatever tree it belongs to, and
// each record found that opens under this store's key is a candidate; the
// newest version of each send (by Updated) is kept. A copy found this way
// may be stale: the send may have been delivered or deleted since, its
// newer version lost with the damage. So a send found queued this way
// comes back Unknown, never resent by itself (an operator reads it in
// GET /outbox/<id> and retries it); one found delivered, dead or unknown
// comes back as it was. Nothing found this way can be misread: each record
// is authenticated by its seal, with its ID as associated data.

// bbolt's page layout (go.etcd.io/bbolt/internal/common, stable across
// its versions): a page header of id (8 bytes), flags (2), count (2),
// overflow (4); a leaf's elements of flags, pos, ksize, vsize (4 bytes
// each), its key at the element's offset plus pos, its value after the
// key; an inline bucket's value is its root (8, 0 when inline) and
// sequence (8) followed by its own leaf page.
const (
	pageHeaderSize  = 16
	leafElementSize = 16
	leafPageFlag    = 0x02
	bucketLeafFlag  = 0x01
	boltMagic       = 0xED0CDAED
	maxScanPage     = 2 * maxBody // a leaf with a record at its bound and overflow pages
)

// scanPages calls visit for each record in a leaf page of the file at
// path (a bucket's, inline or not).
func scanPages(path string, visit func(k, v []byte)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	ps := int64(os.Getpagesize())
	hdr := make([]byte, 64)
	if n, _ := f.ReadAt(hdr, 0); n >= 28 && binary.LittleEndian.Uint32(hdr[16:]) == boltMagic {
		if p := int64(binary.LittleEndian.Uint32(hdr[24:])); p >= 512 && p <= 1<<16 && p&(p-1) == 0 {
			ps = p // the page size its (first) meta page says
		}
	}
	for off := int64(0); off+pageHeaderSize <= size; off += ps {
		if _, err := f.ReadAt(hdr[:pageHeaderSize], off); err != nil {
			return err
		}
		if binary.LittleEndian.Uint64(hdr) != uint64(off/ps) || binary.LittleEndian.Uint16(hdr[8:]) != leafPageFlag {
			continue // not a leaf page where it stands (a continuation, a branch, junk)
		}
		n := (int64(binary.LittleEndian.Uint32(hdr[12:])) + 1) * ps
		n = min(n, size-off, maxScanPage)
		page := make([]byte, n)
		if _, err := f.ReadAt(page, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		leafRecords(page, visit, true)
	}
	return nil
}

// leafRecords calls visit for each record of a leaf page, and of the
// inline buckets it holds (one level).
func leafRecords(page []byte, visit func(k, v []byte), outer bool) {
	if len(page) < pageHeaderSize {
		return
	}
	count := int(binary.LittleEndian.Uint16(page[10:]))
	for i := range count {
		e := pageHeaderSize + i*leafElementSize
		if e+leafElementSize > len(page) {
			return
		}
		flags := binary.LittleEndian.Uint32(page[e:])
		k0 := int64(e) + int64(binary.LittleEndian.Uint32(page[e+4:]))
		k1 := k0 + int64(binary.LittleEndian.Uint32(page[e+8:]))
		v1 := k1 + int64(binary.LittleEndian.Uint32(page[e+12:]))
		if v1 > int64(len(page)) {
			continue
		}
		k, v := page[k0:k1], page[k1:v1]
		if flags&bucketLeafFlag != 0 {
			if outer && len(v) > 16+pageHeaderSize && binary.LittleEndian.Uint64(v) == 0 &&
				binary.LittleEndian.Uint16(v[16+8:]) == leafPageFlag {
				leafRecords(v[16:], visit, false)
			}
			continue
		}
		visit(k, v)
	}
}
