# Helpers shared by the launch scripts (sourced, not run).

# Prints an error naming the script, a pointer to --help, and exits 2.
die() {
  local me
  me="$(basename "$0")"
  echo "$me: error: $*" >&2
  echo "run 'launch/$me --help' for usage" >&2
  exit 2
}

# Prints a command as one copy-pasteable shell line (--flag='value' when a value needs quotes).
quote_line() {
  local out="" a q="'\\''"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+="$a "
    elif [[ "$a" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      out+="${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/$q}' "
    else
      out+="'${a//\'/$q}' "
    fi
  done
  echo "${out% }"
}

# need VALUE FLAG ENVVAR: dies naming the flag (and its variable) when VALUE is empty.
need() {
  [[ -n "$1" ]] || die "missing $2 (or set $3)"
}

# pin REPO PACKAGE: the version requirements.txt pins PACKAGE to (PACKAGE==VERSION).
pin() {
  local v
  v="$(sed -n "s/^$2==\([^ ;#]*\).*/\1/p" "$1/requirements.txt" | head -n1)"
  [[ -n "$v" ]] || die "no '$2==VERSION' pin in $1/requirements.txt"
  echo "$v"
}
