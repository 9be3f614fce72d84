;; rogue.wat: a guest that deletes everything in its workspace.
;;
;; What it does: checks that fd 3 is a preopened directory (the /workspace
;; preopen; if not: stderr, proc_exit(2)), then reads the dispatch from stdin
;; (up to 1 MiB, as writer.wat) and looks for its "prompt" string, which it
;; JSON-unescapes the way writer.wat does (\n \t \r \" \\ \/). It only wants
;; to know whether the prompt is exactly `fail`: empty or missing stdin, a
;; read error, a dispatch over 1 MiB, no "prompt" string, or an escape it does
;; not know (\uXXXX included) all count as "not fail", never as an error.
;;
;; Then it empties the workspace recursively:
;; fd_readdir each directory, skip `.` and `..`, unlink files, symlinks and
;; anything else that is not a directory (path_unlink_file: a symlink is
;; removed, never followed), and for a directory: open it (path_open with
;; O_DIRECTORY and lookupflags 0, so no symlink is followed), empty it the
;; same way, close it, then path_remove_directory. An entry whose type is
;; unknown is tried as a file, then as a directory.
;;
;; Deleting while iterating can upset readdir cookies, so each directory is
;; read in passes: a pass walks the whole listing from cookie 0 and deletes
;; what it sees; passes repeat until one deletes nothing (the directory is
;; empty, or only undeletable entries are left). Entries that cannot be
;; deleted are reported on stderr (`rogue: cannot delete NAME: errno N`) and
;; left. Nesting deeper than 63 directories is not descended into.
;;
;; Then it prints {"type":"final","text":"rogue: deleted N entries"} (N
;; counts files, symlinks and directories removed) and returns (exit 0);
;; if stdout refuses that line, proc_exit(1). When the prompt was `fail`, it
;; instead goes on after that line to write `rogue: failing on purpose` on
;; stderr and proc_exit(1): the deleting is done all the same.
;;
;; What it is for: checking that a hostile guest's damage stays inside its
;; workspace: symlinks pointing outside are unlinked, not followed, and
;; nothing outside the workspace is touched; with `fail`, that the damage of
;; a dispatch that fails is handled like that of one that succeeds.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nread i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nwritten i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $fd_prestat_get (param $fd i32) (param $buf i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_readdir"
    (func $fd_readdir (param $fd i32) (param $buf i32) (param $buf_len i32) (param $cookie i64)
                      (param $bufused i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close"
    (func $fd_close (param $fd i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param $dirfd i32) (param $lookupflags i32) (param $path i32) (param $path_len i32)
                     (param $oflags i32) (param $rights_base i64) (param $rights_inheriting i64)
                     (param $fdflags i32) (param $fd_out i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file"
    (func $path_unlink_file (param $dirfd i32) (param $path i32) (param $path_len i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_remove_directory"
    (func $path_remove_directory (param $dirfd i32) (param $path i32) (param $path_len i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  ;; page 0: scratch and strings; pages 1-8: one readdir buffer per depth;
  ;; pages 9-25: the stdin buffer (1 MiB + 1 byte), unescaped in place
  (memory (export "memory") 26)

  ;; ---- memory layout ---------------------------------------------------
  (global $IOV i32 (i32.const 0))          ;; one iovec {buf, len}
  (global $NUM i32 (i32.const 8))          ;; nwritten / bufused out-parameter
  (global $FD_OUT i32 (i32.const 12))      ;; path_open's fd out-parameter
  (global $PRESTAT i32 (i32.const 16))     ;; fd_prestat_get's result (8 bytes)
  (global $DIGITS i32 (i32.const 32))      ;; a number being formatted
  (global $FINAL i32 (i32.const 0x1000))   ;; the final line
  (global $DIRBUF i32 (i32.const 0x10000)) ;; readdir buffers, DIRBUF_SIZE each
  (global $DIRBUF_SIZE i32 (i32.const 0x2000))
  (global $MAX_DEPTH i32 (i32.const 64))   ;; 64 buffers of 8 KiB = pages 1-8
  (global $IN i32 (i32.const 0x90000))     ;; stdin buffer (IN_CAP + 1 bytes)
  (global $IN_CAP i32 (i32.const 0x100000));; 1 MiB: more input is "not fail"

  ;; ---- WASI constants --------------------------------------------------
  (global $WORKSPACE_FD i32 (i32.const 3))
  (global $DIRENT_SIZE i32 (i32.const 24)) ;; d_next u64, d_ino u64, d_namlen u32, d_type u8
  (global $TYPE_UNKNOWN i32 (i32.const 0))
  (global $TYPE_DIRECTORY i32 (i32.const 3))
  (global $O_DIRECTORY i32 (i32.const 2))
  (global $RIGHTS_DIR i64 (i64.const 0x4002)) ;; fd_read | fd_readdir

  ;; how many entries were removed
  (global $deleted (mut i32) (i32.const 0))

  ;; ---- constant strings (address, length) ------------------------------
  (global $S_FINAL_HEAD i32 (i32.const 64))
  (global $S_FINAL_HEAD_LEN i32 (i32.const 39))
  (data (i32.const 64) "{\"type\":\"final\",\"text\":\"rogue: deleted ")
  (global $S_FINAL_TAIL i32 (i32.const 112))
  (global $S_FINAL_TAIL_LEN i32 (i32.const 11))
  (data (i32.const 112) " entries\"}\n")
  (global $S_CANNOT i32 (i32.const 128))
  (global $S_CANNOT_LEN i32 (i32.const 22))
  (data (i32.const 128) "rogue: cannot delete \"")
  (global $S_ERRNO i32 (i32.const 160))
  (global $S_ERRNO_LEN i32 (i32.const 9))
  (data (i32.const 160) "\": errno ")
  (global $S_NL i32 (i32.const 176))
  (global $S_NL_LEN i32 (i32.const 1))
  (data (i32.const 176) "\n")
  (global $S_TOO_DEEP i32 (i32.const 192))
  (global $S_TOO_DEEP_LEN i32 (i32.const 34))
  (data (i32.const 192) "\": nested too deep, not descended\n")
  (global $S_READDIR i32 (i32.const 240))
  (global $S_READDIR_LEN i32 (i32.const 25))
  (data (i32.const 240) "rogue: fd_readdir: errno ")
  (global $S_ERR_PREOPEN i32 (i32.const 272))
  (global $S_ERR_PREOPEN_LEN i32 (i32.const 48))
  (data (i32.const 272) "rogue: fd 3 is not a preopened directory (errno ")
  (global $S_CLOSE_PAREN i32 (i32.const 328))
  (global $S_CLOSE_PAREN_LEN i32 (i32.const 2))
  (data (i32.const 328) ")\n")
  (global $S_PROMPT_KEY i32 (i32.const 336))
  (global $S_PROMPT_KEY_LEN i32 (i32.const 10))
  (data (i32.const 336) "\"prompt\":\"")
  (global $S_FAIL i32 (i32.const 352))
  (global $S_FAIL_LEN i32 (i32.const 4))
  (data (i32.const 352) "fail")
  (global $S_FAILING i32 (i32.const 360))
  (global $S_FAILING_LEN i32 (i32.const 26))
  (data (i32.const 360) "rogue: failing on purpose\n")

  ;; ---- output helpers --------------------------------------------------

  ;; Write all `len` bytes at `ptr` to `fd`; returns 0 or the WASI errno
  ;; (29, EIO, when the host accepts nothing).
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $err i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (global.get $IOV) (local.get $ptr))
        (i32.store offset=4 (global.get $IOV) (local.get $len))
        (local.set $err
          (call $fd_write (local.get $fd) (global.get $IOV) (i32.const 1) (global.get $NUM)))
        (if (local.get $err) (then (return (local.get $err))))
        (if (i32.eqz (i32.load (global.get $NUM))) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (global.get $NUM))))
        (local.set $len (i32.sub (local.get $len) (i32.load (global.get $NUM))))
        (br $more)))
    (i32.const 0))

  ;; Append a piece of the current stderr line.
  (func $err (param $ptr i32) (param $len i32)
    (drop (call $write_all (i32.const 2) (local.get $ptr) (local.get $len))))

  ;; Append a decimal number to the current stderr line.
  (func $err_uint (param $n i32)
    (call $err (global.get $DIGITS)
               (i32.sub (call $put_uint (global.get $DIGITS) (local.get $n)) (global.get $DIGITS))))

  ;; stderr: rogue: cannot delete "NAME": errno N
  (func $report_failure (param $name i32) (param $name_len i32) (param $errno i32)
    (call $err (global.get $S_CANNOT) (global.get $S_CANNOT_LEN))
    (call $err (local.get $name) (local.get $name_len))
    (call $err (global.get $S_ERRNO) (global.get $S_ERRNO_LEN))
    (call $err_uint (local.get $errno))
    (call $err (global.get $S_NL) (global.get $S_NL_LEN)))

  ;; Copy len bytes from src to dst; returns dst + len.
  (func $put (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  ;; Write the decimal digits of unsigned n at dst; returns the address after them.
  (func $put_uint (param $dst i32) (param $n i32) (result i32)
    (local $digits i32) (local $rest i32) (local $at i32)
    (local.set $digits (i32.const 1))
    (local.set $rest (local.get $n))
    (block $counted
      (loop $count
        (br_if $counted (i32.lt_u (local.get $rest) (i32.const 10)))
        (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
        (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
        (br $count)))
    (local.set $at (i32.add (local.get $dst) (local.get $digits)))
    (local.set $rest (local.get $n))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $rest) (i32.const 10))))
      (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
      (br_if $digit (local.get $rest)))
    (i32.add (local.get $dst) (local.get $digits)))

  ;; ---- the dispatch (the input helpers of writer.wat, minus the dying) --

  ;; Read stdin until EOF into $IN; returns the number of bytes read, or -1
  ;; on a read error or when there is more than IN_CAP.
  ;; The iovec offers one byte more than IN_CAP so that overflow is noticed.
  (func $read_stdin (result i32)
    (local $len i32)
    (block $eof
      (loop $more
        (i32.store (global.get $IOV) (i32.add (global.get $IN) (local.get $len)))
        (i32.store offset=4 (global.get $IOV)
          (i32.sub (i32.add (global.get $IN_CAP) (i32.const 1)) (local.get $len)))
        (if (call $fd_read (i32.const 0) (global.get $IOV) (i32.const 1) (global.get $NUM))
          (then (return (i32.const -1))))
        (br_if $eof (i32.eqz (i32.load (global.get $NUM))))
        (local.set $len (i32.add (local.get $len) (i32.load (global.get $NUM))))
        ;; past the cap: stop before offering an empty iovec
        (br_if $eof (i32.gt_u (local.get $len) (global.get $IN_CAP)))
        (br $more)))
    (if (i32.gt_u (local.get $len) (global.get $IN_CAP))
      (then (return (i32.const -1))))
    (local.get $len))

  ;; Find the first occurrence of needle[0..nlen] in hay[0..hlen]; returns the
  ;; address just past it, or 0 when it does not occur.
  (func $find_after (param $needle i32) (param $nlen i32) (param $hay i32) (param $hlen i32) (result i32)
    (local $at i32) (local $last i32) (local $j i32)
    (if (i32.lt_u (local.get $hlen) (local.get $nlen)) (then (return (i32.const 0))))
    (local.set $at (local.get $hay))
    (local.set $last (i32.add (local.get $hay) (i32.sub (local.get $hlen) (local.get $nlen))))
    (block $absent
      (loop $scan
        (br_if $absent (i32.gt_u (local.get $at) (local.get $last)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $compare
            (br_if $mismatch
              (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $j)))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (if (i32.eq (local.get $j) (local.get $nlen))
              (then (return (i32.add (local.get $at) (local.get $nlen)))))
            (br $compare)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  ;; Given the address just past a JSON string's opening quote, return the
  ;; address of its closing quote (the next `"` not escaped by a backslash),
  ;; or 0 when the string does not end before `end`.
  (func $string_end (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (block $unterminated
      (loop $scan
        (br_if $unterminated (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.eq (local.get $c) (i32.const 34)) ;; '"'
          (then (return (local.get $p))))
        ;; a backslash escapes the byte after it, whatever it is
        (local.set $p (i32.add (local.get $p)
          (select (i32.const 2) (i32.const 1) (i32.eq (local.get $c) (i32.const 92)))))
        (br $scan)))
    (i32.const 0))

  ;; JSON-unescape src[..end) into dst (dst <= src: in place is fine); returns
  ;; the end of what was written, or 0 at an escape it does not know.
  ;; The escaped byte after a backslash always exists: $string_end checked it.
  (func $unescape (param $src i32) (param $end i32) (param $dst i32) (result i32)
    (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $src)))
        (if (i32.eq (local.get $c) (i32.const 92)) ;; '\'
          (then
            (local.set $c (i32.load8_u offset=1 (local.get $src)))
            (block $mapped
              (if (i32.eq (local.get $c) (i32.const 110)) ;; n
                (then (local.set $c (i32.const 10)) (br $mapped)))
              (if (i32.eq (local.get $c) (i32.const 116)) ;; t
                (then (local.set $c (i32.const 9)) (br $mapped)))
              (if (i32.eq (local.get $c) (i32.const 114)) ;; r
                (then (local.set $c (i32.const 13)) (br $mapped)))
              ;; \" \\ \/ stand for themselves
              (br_if $mapped (i32.eq (local.get $c) (i32.const 34)))
              (br_if $mapped (i32.eq (local.get $c) (i32.const 92)))
              (br_if $mapped (i32.eq (local.get $c) (i32.const 47)))
              (return (i32.const 0)))
            (local.set $src (i32.add (local.get $src) (i32.const 2))))
          (else
            (local.set $src (i32.add (local.get $src) (i32.const 1)))))
        (i32.store8 (local.get $dst) (local.get $c))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (br $next)))
    (local.get $dst))

  ;; Whether a[0..alen] and b[0..blen] are the same bytes.
  (func $bytes_eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
    (block $differ
      (loop $compare
        (if (i32.eq (local.get $i) (local.get $alen)) (then (return (i32.const 1))))
        (br_if $differ
          (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                  (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $compare)))
    (i32.const 0))

  ;; Whether the dispatch on stdin has the prompt `fail`. Anything that keeps
  ;; it from saying so (no input, bad input) is a no.
  (func $prompt_is_fail (result i32)
    (local $in_len i32) (local $raw i32) (local $raw_end i32) (local $end i32)
    (local.set $in_len (call $read_stdin))
    (if (i32.eq (local.get $in_len) (i32.const -1)) (then (return (i32.const 0))))
    (local.set $raw (call $find_after (global.get $S_PROMPT_KEY) (global.get $S_PROMPT_KEY_LEN)
                                      (global.get $IN) (local.get $in_len)))
    (if (i32.eqz (local.get $raw)) (then (return (i32.const 0))))
    (local.set $raw_end
      (call $string_end (local.get $raw) (i32.add (global.get $IN) (local.get $in_len))))
    (if (i32.eqz (local.get $raw_end)) (then (return (i32.const 0))))
    (local.set $end (call $unescape (local.get $raw) (local.get $raw_end) (local.get $raw)))
    (if (i32.eqz (local.get $end)) (then (return (i32.const 0))))
    (call $bytes_eq (local.get $raw) (i32.sub (local.get $end) (local.get $raw))
                    (global.get $S_FAIL) (global.get $S_FAIL_LEN)))

  ;; ---- the deleting ----------------------------------------------------

  ;; Whether name[0..len] is "." or "..".
  (func $is_dot_or_dotdot (param $name i32) (param $len i32) (result i32)
    (if (i32.eq (local.get $len) (i32.const 1))
      (then (return (i32.eq (i32.load8_u (local.get $name)) (i32.const 46)))))
    (if (i32.eq (local.get $len) (i32.const 2))
      (then (return (i32.eq (i32.load16_u (local.get $name)) (i32.const 0x2e2e)))))
    (i32.const 0))

  ;; Remove the directory `name` in `dirfd`: open it without following
  ;; symlinks, empty it, close it, remove it. Returns 1 if it is gone.
  (func $remove_dir (param $dirfd i32) (param $name i32) (param $name_len i32) (param $depth i32) (result i32)
    (local $errno i32) (local $sub i32)
    (if (i32.ge_u (i32.add (local.get $depth) (i32.const 1)) (global.get $MAX_DEPTH))
      (then
        (call $err (global.get $S_CANNOT) (global.get $S_CANNOT_LEN))
        (call $err (local.get $name) (local.get $name_len))
        (call $err (global.get $S_TOO_DEEP) (global.get $S_TOO_DEEP_LEN))
        (return (i32.const 0))))
    (local.set $errno
      (call $path_open (local.get $dirfd) (i32.const 0) (local.get $name) (local.get $name_len)
                       (global.get $O_DIRECTORY) (global.get $RIGHTS_DIR) (global.get $RIGHTS_DIR)
                       (i32.const 0) (global.get $FD_OUT)))
    (if (local.get $errno)
      (then
        (call $report_failure (local.get $name) (local.get $name_len) (local.get $errno))
        (return (i32.const 0))))
    (local.set $sub (i32.load (global.get $FD_OUT)))
    (call $clear_dir (local.get $sub) (i32.add (local.get $depth) (i32.const 1)))
    (drop (call $fd_close (local.get $sub)))
    (local.set $errno (call $path_remove_directory (local.get $dirfd) (local.get $name) (local.get $name_len)))
    (if (local.get $errno)
      (then
        (call $report_failure (local.get $name) (local.get $name_len) (local.get $errno))
        (return (i32.const 0))))
    (global.set $deleted (i32.add (global.get $deleted) (i32.const 1)))
    (i32.const 1))

  ;; Remove one directory entry of type `type`. Returns 1 if it is gone.
  (func $remove_entry (param $dirfd i32) (param $name i32) (param $name_len i32) (param $type i32)
                      (param $depth i32) (result i32)
    (local $errno i32)
    (if (i32.ne (local.get $type) (global.get $TYPE_DIRECTORY))
      (then
        ;; a file, a symlink (to anything), a socket...: unlink it
        (local.set $errno (call $path_unlink_file (local.get $dirfd) (local.get $name) (local.get $name_len)))
        (if (i32.eqz (local.get $errno))
          (then
            (global.set $deleted (i32.add (global.get $deleted) (i32.const 1)))
            (return (i32.const 1))))
        ;; known not to be a directory: give up; unknown: try it as one
        (if (i32.ne (local.get $type) (global.get $TYPE_UNKNOWN))
          (then
            (call $report_failure (local.get $name) (local.get $name_len) (local.get $errno))
            (return (i32.const 0))))))
    (call $remove_dir (local.get $dirfd) (local.get $name) (local.get $name_len) (local.get $depth)))

  ;; Delete everything in the open directory `fd`, which sits `depth` levels
  ;; below the workspace. Each depth has its own readdir buffer, so a listing
  ;; survives the recursion into its subdirectories.
  (func $clear_dir (param $fd i32) (param $depth i32)
    (local $buf i32) (local $used i32) (local $pos i32) (local $cookie i64)
    (local $entry i32) (local $name i32) (local $name_len i32) (local $errno i32)
    (local $removed i32)
    (local.set $buf (i32.add (global.get $DIRBUF) (i32.mul (local.get $depth) (global.get $DIRBUF_SIZE))))
    (loop $pass
      ;; one pass: the whole listing from cookie 0, a buffer at a time
      (local.set $removed (i32.const 0))
      (local.set $cookie (i64.const 0))
      (block $listing_done
        (loop $chunk
          (local.set $errno
            (call $fd_readdir (local.get $fd) (local.get $buf) (global.get $DIRBUF_SIZE)
                              (local.get $cookie) (global.get $NUM)))
          (if (local.get $errno)
            (then
              (call $err (global.get $S_READDIR) (global.get $S_READDIR_LEN))
              (call $err_uint (local.get $errno))
              (call $err (global.get $S_NL) (global.get $S_NL_LEN))
              (return)))
          (local.set $used (i32.load (global.get $NUM)))
          (local.set $pos (i32.const 0))
          ;; each whole entry in the buffer (the last one may be cut short)
          (block $entries_done
            (loop $next_entry
              (br_if $entries_done
                (i32.gt_u (i32.add (local.get $pos) (global.get $DIRENT_SIZE)) (local.get $used)))
              (local.set $entry (i32.add (local.get $buf) (local.get $pos)))
              (local.set $name_len (i32.load offset=16 (local.get $entry)))
              (br_if $entries_done
                (i32.gt_u (i32.add (i32.add (local.get $pos) (global.get $DIRENT_SIZE)) (local.get $name_len))
                          (local.get $used)))
              (local.set $name (i32.add (local.get $entry) (global.get $DIRENT_SIZE)))
              (local.set $cookie (i64.load (local.get $entry)))  ;; d_next
              (if (i32.eqz (call $is_dot_or_dotdot (local.get $name) (local.get $name_len)))
                (then
                  (local.set $removed
                    (i32.add (local.get $removed)
                      (call $remove_entry (local.get $fd) (local.get $name) (local.get $name_len)
                                          (i32.load8_u offset=20 (local.get $entry)) (local.get $depth))))))
              (local.set $pos (i32.add (local.get $pos) (i32.add (global.get $DIRENT_SIZE) (local.get $name_len))))
              (br $next_entry)))
          ;; a short buffer means the listing ended; a full one, read on from
          ;; the last whole entry (unless not even one fitted: give up)
          (br_if $listing_done (i32.lt_u (local.get $used) (global.get $DIRBUF_SIZE)))
          (br_if $listing_done (i32.eqz (local.get $pos)))
          (br $chunk)))
      ;; something went: the cookies may have shifted, list again
      (br_if $pass (local.get $removed))))

  (func $main (export "_start")
    (local $errno i32) (local $p i32) (local $fail i32)

    ;; fd 3 must be the preopened workspace directory (prestat tag 0 = dir)
    (local.set $errno (call $fd_prestat_get (global.get $WORKSPACE_FD) (global.get $PRESTAT)))
    (if (i32.or (local.get $errno) (i32.load8_u (global.get $PRESTAT)))
      (then
        (call $err (global.get $S_ERR_PREOPEN) (global.get $S_ERR_PREOPEN_LEN))
        (call $err_uint (local.get $errno))
        (call $err (global.get $S_CLOSE_PAREN) (global.get $S_CLOSE_PAREN_LEN))
        (call $proc_exit (i32.const 2))))

    (local.set $fail (call $prompt_is_fail))

    (call $clear_dir (global.get $WORKSPACE_FD) (i32.const 0))

    ;; {"type":"final","text":"rogue: deleted N entries"}\n
    (local.set $p (call $put (global.get $FINAL) (global.get $S_FINAL_HEAD) (global.get $S_FINAL_HEAD_LEN)))
    (local.set $p (call $put_uint (local.get $p) (global.get $deleted)))
    (local.set $p (call $put (local.get $p) (global.get $S_FINAL_TAIL) (global.get $S_FINAL_TAIL_LEN)))
    (if (call $write_all (i32.const 1) (global.get $FINAL) (i32.sub (local.get $p) (global.get $FINAL)))
      (then (call $proc_exit (i32.const 1))))

    ;; prompt `fail`: the deleting is done, now fail the dispatch
    (if (local.get $fail)
      (then
        (call $err (global.get $S_FAILING) (global.get $S_FAILING_LEN))
        (call $proc_exit (i32.const 1)))))
)
