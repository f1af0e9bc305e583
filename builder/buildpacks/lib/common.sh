# Shared by the built-in buildpacks' bin/compile scripts (copied next to each at build time).

# Print a heading or an indented line the way the build output shows them.
step() { echo "-----> $*"; }
info() { echo "       $*"; }
indent() { sed -u -e '/^[[:space:]]*$/d' -e 's/^/       /'; }
fail() { echo " !     $*"; exit 1; }

# Export the app's config vars (files in ENV_DIR) except those that would change how the
# build itself runs.
export_env_dir() {
  local env_dir=$1 name
  [ -d "$env_dir" ] || return 0
  for path in "$env_dir"/*; do
    [ -f "$path" ] || continue
    name=$(basename "$path")
    case "$name" in
      PATH|HOME|GIT_DIR|CPATH|CPPATH|LD_PRELOAD|LD_LIBRARY_PATH|LIBRARY_PATH|PYTHONHOME|PYTHONPATH|IFS|BASH_ENV|ENV|BUILDPACK_URL) continue ;;
    esac
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    export "$name=$(cat "$path")"
  done
}

# Under `set -e` a failing command ends the script; say which one, so the build log explains it.
trap 'echo " !     $(basename "$0") stopped: \`$BASH_COMMAND\` failed (line $LINENO)"' ERR
