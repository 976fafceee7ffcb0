# Name checks shared by run_all_bert_exp.sh and run_all_large_exp.sh (sourced from the repository root):
# a bad MODEL / TASK / MODE / RANK stops the script before anything runs, naming the valid choices.

fail() { echo "$(basename "$0"): $*" >&2; exit 2; }
# check_names <group> <VARIABLE> <names, comma-separated>: each name has a config in configs/<group>/
check_names() {
  local group=$1 var=$2 name names
  IFS=',' read -ra names <<< "$3"
  for name in "${names[@]}"; do
    [ "$group/$name" != method/ptune ] || fail "$var=ptune: the paper's P-Tuning has no method here (configs/README.md, \"Not covered\"); MODE=prompt is prompt tuning"
    [ -f "configs/$group/$name.yaml" ] || fail "$var: '$name' is not one of: $(cd "configs/$group" && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')"
  done
}
# check_rank <methods, comma-separated>: RANK is the tensor rank of the LoRETTA methods, which other methods lack
check_rank() {
  local m methods
  [ -n "${RANK:-}" ] || return 0
  IFS=',' read -ra methods <<< "$1"
  for m in "${methods[@]}"; do
    case "$m" in
      loretta_adp|loretta_rep) ;;
      *) fail "RANK=$RANK is the tensor rank of the LoRETTA methods (loretta_adp, loretta_rep); MODE=$1 includes '$m', which has none: run it without RANK" ;;
    esac
  done
}
