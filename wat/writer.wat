;; writer.wat: a guest that creates and edits workspace files as told.
;;
;; What it does: reads the dispatch from stdin, takes the "prompt" string and
;; JSON-unescapes it (\n \t \r \" \\ \/ are understood; any other escape,
;; \uXXXX included, is refused: stderr, proc_exit(2)). The prompt is a list of
;; lines, one command each; empty lines are skipped:
;;
;;   write PATH CONTENT    create or truncate PATH, write CONTENT + "\n"
;;   append PATH CONTENT   append CONTENT + "\n" to PATH, creating it if missing
;;   symlink PATH TARGET   create a symlink at PATH whose content is TARGET
;;                         (path_symlink; TARGET is not checked or resolved)
;;   mkdir PATH            create a directory
;;   rm PATH               unlink a file (or a symlink)
;;   rmdir PATH            remove an empty directory
;;   wait                  block for one hour in a single poll_oneoff (a
;;                         relative monotonic-clock subscription of 3600 s),
;;                         then go on; tests kill the run while it waits
;;
;; PATH is one word, relative to /workspace (fd 3); CONTENT and TARGET are the
;; rest of the line after the single space following PATH (they may be empty
;; and may hold spaces; an empty TARGET is passed on as is, and the host
;; refuses it with an errno). Symlinks are followed when opening files for
;; write/append. Each command's effect is done (files closed) before the next
;; line runs, so what came before a `wait` is visible while it waits.
;;
;; On success it prints {"type":"final","text":"writer: N ops"} (N = the
;; number of commands run) and returns. The first command that fails stops it:
;; a line on stderr, `writer: line L: CMD PATH: errno N` (`writer: line L:
;; wait: errno N` when poll_oneoff fails), then proc_exit(1). An unknown
;; command, a missing PATH, text after PATH for mkdir/rm/rmdir, or any text
;; after `wait` (a trailing space included): a line on stderr and
;; proc_exit(2). Commands before the failing one stay done.
;;
;; What it is for: giving tests a guest that changes the workspace in known
;; ways (file contents, directories, removals) and fails in known ways with
;; known WASI errnos.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nread i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nwritten i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close"
    (func $fd_close (param $fd i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param $dirfd i32) (param $lookupflags i32) (param $path i32) (param $path_len i32)
                     (param $oflags i32) (param $rights_base i64) (param $rights_inheriting i64)
                     (param $fdflags i32) (param $fd_out i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $path_create_directory (param $dirfd i32) (param $path i32) (param $path_len i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file"
    (func $path_unlink_file (param $dirfd i32) (param $path i32) (param $path_len i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_remove_directory"
    (func $path_remove_directory (param $dirfd i32) (param $path i32) (param $path_len i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink"
    (func $path_symlink (param $old_path i32) (param $old_path_len i32) (param $dirfd i32)
                        (param $new_path i32) (param $new_path_len i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param $in i32) (param $out i32) (param $nsubscriptions i32) (param $nevents i32)
                       (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  ;; 35 pages = 2240 KiB: room for the 1 MiB input and the unescaped prompt.
  (memory (export "memory") 35)

  ;; ---- memory layout ---------------------------------------------------
  (global $IOV i32 (i32.const 0))          ;; one iovec {buf, len}
  (global $NUM i32 (i32.const 8))          ;; nread / nwritten out-parameter
  (global $FD_OUT i32 (i32.const 12))      ;; path_open's fd out-parameter
  (global $DIGITS i32 (i32.const 32))      ;; a number formatted for stderr
  (global $SUB i32 (i32.const 0x800))      ;; poll_oneoff's subscription (48 bytes)
  (global $EVENT i32 (i32.const 0x840))    ;; poll_oneoff's event (32 bytes)
  (global $NEVENTS i32 (i32.const 0x860))  ;; poll_oneoff's nevents out-parameter
  (global $FINAL i32 (i32.const 0x1000))   ;; the final line
  (global $IN i32 (i32.const 0x10000))     ;; stdin buffer (IN_CAP + 1 bytes)
  (global $IN_CAP i32 (i32.const 0x100000));; 1 MiB: more input is an error
  (global $PROMPT i32 (i32.const 0x120000));; the unescaped prompt

  ;; ---- WASI constants --------------------------------------------------
  (global $WORKSPACE_FD i32 (i32.const 3))
  (global $LOOKUP_FOLLOW i32 (i32.const 1))   ;; lookupflags.symlink_follow
  (global $O_CREAT i32 (i32.const 1))         ;; oflags.creat
  (global $O_CREAT_TRUNC i32 (i32.const 9))   ;; oflags.creat | oflags.trunc
  (global $FDFLAG_APPEND i32 (i32.const 1))   ;; fdflags.append
  (global $RIGHT_WRITE i64 (i64.const 64))    ;; rights.fd_write
  (global $CLOCK_MONOTONIC i32 (i32.const 1)) ;; clockid.monotonic
  (global $WAIT_NS i64 (i64.const 3600000000000)) ;; one hour

  ;; ---- commands --------------------------------------------------------
  ;; ordered by shape: PATH + rest of line (write..symlink), PATH only
  ;; (mkdir..rmdir), nothing at all (wait)
  (global $OP_WRITE i32 (i32.const 1))
  (global $OP_APPEND i32 (i32.const 2))
  (global $OP_SYMLINK i32 (i32.const 3))
  (global $OP_MKDIR i32 (i32.const 4))
  (global $OP_RM i32 (i32.const 5))
  (global $OP_RMDIR i32 (i32.const 6))
  (global $OP_WAIT i32 (i32.const 7))

  ;; ---- constant strings (address, length) ------------------------------
  (global $S_PROMPT_KEY i32 (i32.const 64))
  (global $S_PROMPT_KEY_LEN i32 (i32.const 10))
  (data (i32.const 64) "\"prompt\":\"")
  (global $S_WRITE i32 (i32.const 80))
  (global $S_WRITE_LEN i32 (i32.const 5))
  (data (i32.const 80) "write")
  (global $S_APPEND i32 (i32.const 88))
  (global $S_APPEND_LEN i32 (i32.const 6))
  (data (i32.const 88) "append")
  (global $S_MKDIR i32 (i32.const 96))
  (global $S_MKDIR_LEN i32 (i32.const 5))
  (data (i32.const 96) "mkdir")
  (global $S_RM i32 (i32.const 104))
  (global $S_RM_LEN i32 (i32.const 2))
  (data (i32.const 104) "rm")
  (global $S_RMDIR i32 (i32.const 112))
  (global $S_RMDIR_LEN i32 (i32.const 5))
  (data (i32.const 112) "rmdir")
  (global $S_NL i32 (i32.const 120))
  (global $S_NL_LEN i32 (i32.const 1))
  (data (i32.const 120) "\n")
  (global $S_SPACE i32 (i32.const 122))
  (global $S_SPACE_LEN i32 (i32.const 1))
  (data (i32.const 122) " ")
  (global $S_FINAL_HEAD i32 (i32.const 128))
  (global $S_FINAL_HEAD_LEN i32 (i32.const 32))
  (data (i32.const 128) "{\"type\":\"final\",\"text\":\"writer: ")
  (global $S_FINAL_TAIL i32 (i32.const 168))
  (global $S_FINAL_TAIL_LEN i32 (i32.const 7))
  (data (i32.const 168) " ops\"}\n")
  (global $S_LINE i32 (i32.const 176))
  (global $S_LINE_LEN i32 (i32.const 13))
  (data (i32.const 176) "writer: line ")
  (global $S_COLON i32 (i32.const 192))
  (global $S_COLON_LEN i32 (i32.const 2))
  (data (i32.const 192) ": ")
  (global $S_ERRNO i32 (i32.const 200))
  (global $S_ERRNO_LEN i32 (i32.const 8))
  (data (i32.const 200) ": errno ")
  (global $S_UNKNOWN i32 (i32.const 208))
  (global $S_UNKNOWN_LEN i32 (i32.const 17))
  (data (i32.const 208) "unknown command \"")
  (global $S_QUOTE_NL i32 (i32.const 232))
  (global $S_QUOTE_NL_LEN i32 (i32.const 2))
  (data (i32.const 232) "\"\n")
  (global $S_NO_PATH i32 (i32.const 240))
  (global $S_NO_PATH_LEN i32 (i32.const 14))
  (data (i32.const 240) " needs a PATH\n")
  (global $S_EXTRA i32 (i32.const 256))
  (global $S_EXTRA_LEN i32 (i32.const 40))
  (data (i32.const 256) " takes only a PATH, found more after it\n")
  (global $S_ERR_READ i32 (i32.const 304))
  (global $S_ERR_READ_LEN i32 (i32.const 30))
  (data (i32.const 304) "writer: cannot read the stdin\n")
  (global $S_ERR_BIG i32 (i32.const 336))
  (global $S_ERR_BIG_LEN i32 (i32.const 42))
  (data (i32.const 336) "writer: the dispatch is larger than 1 MiB\n")
  (global $S_ERR_FIELD i32 (i32.const 384))
  (global $S_ERR_FIELD_LEN i32 (i32.const 44))
  (data (i32.const 384) "writer: the dispatch has no \"prompt\" string\n")
  (global $S_ERR_ESCAPE i32 (i32.const 432))
  (global $S_ERR_ESCAPE_LEN i32 (i32.const 66))
  (data (i32.const 432) "writer: unsupported escape in the prompt (only \\n \\t \\r \\\" \\\\ \\/)\n")
  (global $S_SYMLINK i32 (i32.const 504))
  (global $S_SYMLINK_LEN i32 (i32.const 7))
  (data (i32.const 504) "symlink")
  (global $S_WAIT i32 (i32.const 512))
  (global $S_WAIT_LEN i32 (i32.const 4))
  (data (i32.const 512) "wait")
  (global $S_NO_ARGS i32 (i32.const 520))
  (global $S_NO_ARGS_LEN i32 (i32.const 41))
  (data (i32.const 520) " takes no arguments, found more after it\n")

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

  ;; Write a message to stderr and exit with `code`.
  (func $die (param $msg i32) (param $len i32) (param $code i32)
    (call $err (local.get $msg) (local.get $len))
    (call $proc_exit (local.get $code)))

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

  ;; ---- input helpers ---------------------------------------------------

  ;; Read stdin until EOF into $IN; returns the number of bytes read.
  ;; The iovec offers one byte more than IN_CAP so that overflow is noticed.
  (func $read_stdin (result i32)
    (local $len i32)
    (block $eof
      (loop $more
        (i32.store (global.get $IOV) (i32.add (global.get $IN) (local.get $len)))
        (i32.store offset=4 (global.get $IOV)
          (i32.sub (i32.add (global.get $IN_CAP) (i32.const 1)) (local.get $len)))
        (if (call $fd_read (i32.const 0) (global.get $IOV) (i32.const 1) (global.get $NUM))
          (then (call $die (global.get $S_ERR_READ) (global.get $S_ERR_READ_LEN) (i32.const 2))))
        (br_if $eof (i32.eqz (i32.load (global.get $NUM))))
        (local.set $len (i32.add (local.get $len) (i32.load (global.get $NUM))))
        ;; past the cap: stop before offering an empty iovec
        (br_if $eof (i32.gt_u (local.get $len) (global.get $IN_CAP)))
        (br $more)))
    (if (i32.gt_u (local.get $len) (global.get $IN_CAP))
      (then (call $die (global.get $S_ERR_BIG) (global.get $S_ERR_BIG_LEN) (i32.const 2))))
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

  ;; JSON-unescape src[..end) into dst; returns the end of what was written.
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
              (call $die (global.get $S_ERR_ESCAPE) (global.get $S_ERR_ESCAPE_LEN) (i32.const 2)))
            (local.set $src (i32.add (local.get $src) (i32.const 2))))
          (else
            (local.set $src (i32.add (local.get $src) (i32.const 1)))))
        (i32.store8 (local.get $dst) (local.get $c))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (br $next)))
    (local.get $dst))

  ;; The address of the first `byte` in [p, end), or `end`.
  (func $find_byte (param $p i32) (param $end i32) (param $byte i32) (result i32)
    (block $found
      (loop $scan
        (br_if $found (i32.ge_u (local.get $p) (local.get $end)))
        (br_if $found (i32.eq (i32.load8_u (local.get $p)) (local.get $byte)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
    (local.get $p))

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

  ;; ---- the commands ----------------------------------------------------

  ;; Open PATH for writing (with the given oflags and fdflags), write
  ;; CONTENT and a newline, close it. Returns 0 or the first WASI errno.
  (func $write_file (param $path i32) (param $path_len i32) (param $content i32) (param $content_len i32)
                    (param $oflags i32) (param $fdflags i32) (result i32)
    (local $errno i32) (local $fd i32) (local $close_errno i32)
    (local.set $errno
      (call $path_open (global.get $WORKSPACE_FD) (global.get $LOOKUP_FOLLOW)
                       (local.get $path) (local.get $path_len)
                       (local.get $oflags) (global.get $RIGHT_WRITE) (i64.const 0)
                       (local.get $fdflags) (global.get $FD_OUT)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (local.set $fd (i32.load (global.get $FD_OUT)))
    (local.set $errno (call $write_all (local.get $fd) (local.get $content) (local.get $content_len)))
    (if (i32.eqz (local.get $errno))
      (then (local.set $errno (call $write_all (local.get $fd) (global.get $S_NL) (global.get $S_NL_LEN)))))
    (local.set $close_errno (call $fd_close (local.get $fd)))
    (select (local.get $errno) (local.get $close_errno) (local.get $errno)))

  ;; Block for WAIT_NS in one poll_oneoff on a relative monotonic-clock
  ;; subscription (the layout block.wat uses). Returns 0 or the WASI errno
  ;; (of the call, or the one the event carries).
  (func $wait (result i32)
    (local $errno i32)
    ;; subscription: userdata u64 @0, tag u8 @8 (0 = clock), clock id u32 @16,
    ;; timeout u64 @24, precision u64 @32, flags u16 @40 (0 = relative)
    (memory.fill (global.get $SUB) (i32.const 0) (i32.const 48))
    (i32.store offset=16 (global.get $SUB) (global.get $CLOCK_MONOTONIC))
    (i64.store offset=24 (global.get $SUB) (global.get $WAIT_NS))
    (local.set $errno
      (call $poll_oneoff (global.get $SUB) (global.get $EVENT) (i32.const 1) (global.get $NEVENTS)))
    (if (local.get $errno) (then (return (local.get $errno))))
    ;; event: userdata u64 @0, error u16 @8, type u8 @10
    (if (i32.load (global.get $NEVENTS))
      (then (return (i32.load16_u offset=8 (global.get $EVENT)))))
    (i32.const 0))

  ;; Which command a word names: one of the $OP_ constants, or 0.
  (func $op_of (param $word i32) (param $len i32) (result i32)
    (if (call $bytes_eq (local.get $word) (local.get $len) (global.get $S_WRITE) (global.get $S_WRITE_LEN))
      (then (return (global.get $OP_WRITE))))
    (if (call $bytes_eq (local.get $word) (local.get $len) (global.get $S_APPEND) (global.get $S_APPEND_LEN))
      (then (return (global.get $OP_APPEND))))
    (if (call $bytes_eq (local.get $word) (local.get $len) (global.get $S_MKDIR) (global.get $S_MKDIR_LEN))
      (then (return (global.get $OP_MKDIR))))
    (if (call $bytes_eq (local.get $word) (local.get $len) (global.get $S_RM) (global.get $S_RM_LEN))
      (then (return (global.get $OP_RM))))
    (if (call $bytes_eq (local.get $word) (local.get $len) (global.get $S_RMDIR) (global.get $S_RMDIR_LEN))
      (then (return (global.get $OP_RMDIR))))
    (if (call $bytes_eq (local.get $word) (local.get $len) (global.get $S_SYMLINK) (global.get $S_SYMLINK_LEN))
      (then (return (global.get $OP_SYMLINK))))
    (if (call $bytes_eq (local.get $word) (local.get $len) (global.get $S_WAIT) (global.get $S_WAIT_LEN))
      (then (return (global.get $OP_WAIT))))
    (i32.const 0))

  ;; Start a stderr line: `writer: line L: CMD`.
  (func $err_line_head (param $lineno i32) (param $cmd i32) (param $cmd_len i32)
    (call $err (global.get $S_LINE) (global.get $S_LINE_LEN))
    (call $err_uint (local.get $lineno))
    (call $err (global.get $S_COLON) (global.get $S_COLON_LEN))
    (call $err (local.get $cmd) (local.get $cmd_len)))

  ;; Run the command on line [start, end) (line number `lineno`, not empty).
  ;; Returns only on success.
  (func $run_line (param $start i32) (param $end i32) (param $lineno i32)
    (local $cmd_end i32) (local $cmd_len i32) (local $op i32)
    (local $path i32) (local $path_end i32) (local $path_len i32)
    (local $content i32) (local $errno i32)

    ;; CMD is the first word; PATH the word after the next space; CONTENT
    ;; everything after the space following PATH (maybe nothing)
    (local.set $cmd_end (call $find_byte (local.get $start) (local.get $end) (i32.const 32)))
    (local.set $cmd_len (i32.sub (local.get $cmd_end) (local.get $start)))
    (local.set $path (select (i32.add (local.get $cmd_end) (i32.const 1)) (local.get $end)
                             (i32.lt_u (local.get $cmd_end) (local.get $end))))
    (local.set $path_end (call $find_byte (local.get $path) (local.get $end) (i32.const 32)))
    (local.set $path_len (i32.sub (local.get $path_end) (local.get $path)))
    (local.set $content (select (i32.add (local.get $path_end) (i32.const 1)) (local.get $path_end)
                                (i32.lt_u (local.get $path_end) (local.get $end))))

    (local.set $op (call $op_of (local.get $start) (local.get $cmd_len)))
    (if (i32.eqz (local.get $op))
      (then
        ;; writer: line L: unknown command "CMD"
        (call $err (global.get $S_LINE) (global.get $S_LINE_LEN))
        (call $err_uint (local.get $lineno))
        (call $err (global.get $S_COLON) (global.get $S_COLON_LEN))
        (call $err (global.get $S_UNKNOWN) (global.get $S_UNKNOWN_LEN))
        (call $err (local.get $start) (local.get $cmd_len))
        (call $die (global.get $S_QUOTE_NL) (global.get $S_QUOTE_NL_LEN) (i32.const 2))))
    (if (i32.eq (local.get $op) (global.get $OP_WAIT))
      (then
        ;; nothing may follow the word, not even a space
        (if (i32.ne (local.get $cmd_end) (local.get $end))
          (then
            (call $err_line_head (local.get $lineno) (local.get $start) (local.get $cmd_len))
            (call $die (global.get $S_NO_ARGS) (global.get $S_NO_ARGS_LEN) (i32.const 2))))
        (local.set $errno (call $wait))
        (if (local.get $errno)
          (then
            ;; writer: line L: wait: errno N
            (call $err_line_head (local.get $lineno) (local.get $start) (local.get $cmd_len))
            (call $err (global.get $S_ERRNO) (global.get $S_ERRNO_LEN))
            (call $err_uint (local.get $errno))
            (call $die (global.get $S_NL) (global.get $S_NL_LEN) (i32.const 1))))
        (return)))
    (if (i32.eqz (local.get $path_len))
      (then
        (call $err_line_head (local.get $lineno) (local.get $start) (local.get $cmd_len))
        (call $die (global.get $S_NO_PATH) (global.get $S_NO_PATH_LEN) (i32.const 2))))
    (if (i32.and (i32.ge_u (local.get $op) (global.get $OP_MKDIR))
                 (i32.ne (local.get $path_end) (local.get $end)))
      (then
        (call $err_line_head (local.get $lineno) (local.get $start) (local.get $cmd_len))
        (call $die (global.get $S_EXTRA) (global.get $S_EXTRA_LEN) (i32.const 2))))

    (block $ran
      (if (i32.eq (local.get $op) (global.get $OP_WRITE))
        (then
          (local.set $errno
            (call $write_file (local.get $path) (local.get $path_len)
                              (local.get $content) (i32.sub (local.get $end) (local.get $content))
                              (global.get $O_CREAT_TRUNC) (i32.const 0)))
          (br $ran)))
      (if (i32.eq (local.get $op) (global.get $OP_APPEND))
        (then
          (local.set $errno
            (call $write_file (local.get $path) (local.get $path_len)
                              (local.get $content) (i32.sub (local.get $end) (local.get $content))
                              (global.get $O_CREAT) (global.get $FDFLAG_APPEND)))
          (br $ran)))
      (if (i32.eq (local.get $op) (global.get $OP_SYMLINK))
        (then
          (local.set $errno
            (call $path_symlink (local.get $content) (i32.sub (local.get $end) (local.get $content))
                                (global.get $WORKSPACE_FD) (local.get $path) (local.get $path_len)))
          (br $ran)))
      (if (i32.eq (local.get $op) (global.get $OP_MKDIR))
        (then
          (local.set $errno
            (call $path_create_directory (global.get $WORKSPACE_FD) (local.get $path) (local.get $path_len)))
          (br $ran)))
      (if (i32.eq (local.get $op) (global.get $OP_RM))
        (then
          (local.set $errno
            (call $path_unlink_file (global.get $WORKSPACE_FD) (local.get $path) (local.get $path_len)))
          (br $ran)))
      ;; OP_RMDIR
      (local.set $errno
        (call $path_remove_directory (global.get $WORKSPACE_FD) (local.get $path) (local.get $path_len))))

    (if (local.get $errno)
      (then
        ;; writer: line L: CMD PATH: errno N
        (call $err_line_head (local.get $lineno) (local.get $start) (local.get $cmd_len))
        (call $err (global.get $S_SPACE) (global.get $S_SPACE_LEN))
        (call $err (local.get $path) (local.get $path_len))
        (call $err (global.get $S_ERRNO) (global.get $S_ERRNO_LEN))
        (call $err_uint (local.get $errno))
        (call $die (global.get $S_NL) (global.get $S_NL_LEN) (i32.const 1)))))

  (func $main (export "_start")
    (local $in_len i32) (local $in_end i32)
    (local $raw i32) (local $raw_end i32)
    (local $p i32) (local $end i32) (local $line_end i32)
    (local $lineno i32) (local $ops i32)

    (local.set $in_len (call $read_stdin))
    (local.set $in_end (i32.add (global.get $IN) (local.get $in_len)))
    (local.set $raw (call $find_after (global.get $S_PROMPT_KEY) (global.get $S_PROMPT_KEY_LEN)
                                      (global.get $IN) (local.get $in_len)))
    (if (i32.eqz (local.get $raw))
      (then (call $die (global.get $S_ERR_FIELD) (global.get $S_ERR_FIELD_LEN) (i32.const 2))))
    (local.set $raw_end (call $string_end (local.get $raw) (local.get $in_end)))
    (if (i32.eqz (local.get $raw_end))
      (then (call $die (global.get $S_ERR_FIELD) (global.get $S_ERR_FIELD_LEN) (i32.const 2))))
    (local.set $end (call $unescape (local.get $raw) (local.get $raw_end) (global.get $PROMPT)))

    ;; one command per line
    (local.set $p (global.get $PROMPT))
    (block $all_done
      (loop $next_line
        (br_if $all_done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $lineno (i32.add (local.get $lineno) (i32.const 1)))
        (local.set $line_end (call $find_byte (local.get $p) (local.get $end) (i32.const 10)))
        (if (i32.ne (local.get $p) (local.get $line_end))
          (then
            (call $run_line (local.get $p) (local.get $line_end) (local.get $lineno))
            (local.set $ops (i32.add (local.get $ops) (i32.const 1)))))
        (local.set $p (i32.add (local.get $line_end) (i32.const 1)))
        (br $next_line)))

    ;; {"type":"final","text":"writer: N ops"}\n
    (local.set $p (call $put (global.get $FINAL) (global.get $S_FINAL_HEAD) (global.get $S_FINAL_HEAD_LEN)))
    (local.set $p (call $put_uint (local.get $p) (local.get $ops)))
    (local.set $p (call $put (local.get $p) (global.get $S_FINAL_TAIL) (global.get $S_FINAL_TAIL_LEN)))
    (if (call $write_all (i32.const 1) (global.get $FINAL) (i32.sub (local.get $p) (global.get $FINAL)))
      (then (call $proc_exit (i32.const 1)))))
)
