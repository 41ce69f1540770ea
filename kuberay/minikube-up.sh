#!/usr/bin/env bash
# mbta_ray on Minikube with KubeRay: cluster, operator, image, the pipeline RayJob, the RayService,
# and one prediction through a port-forward. Needs minikube, kubectl, helm and docker.
#   bash kuberay/minikube-up.sh            (from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERAY_VERSION=1.7.0                          # = the CRDs vendored in kuberay/crds
RAY_VERSION=$(python3 -c "import re;print(re.search(r'ray\[[^]]*\]==([0-9.]+)', open('pyproject.toml').read()).group(1))")
IMAGE="mbta-ray:${RAY_VERSION}"

# 1. A cluster big enough for two Ray clusters (the pipeline's and the service's: a head and a
#    2-CPU worker each, autoscaler sidecars), the operator and Minikube's own pods.
minikube status >/dev/null 2>&1 || minikube start --cpus 8 --memory 16g --disk-size 40g

# 2. The KubeRay operator.
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null 2>&1 || true
helm repo update kuberay >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "${KUBERAY_VERSION}" --wait

# 3. The image, built inside Minikube so no registry is needed (imagePullPolicy: IfNotPresent).
minikube image build -t "${IMAGE}" -f kuberay/Dockerfile .

# 4. Storage, the training pipeline and the service (the overlay's PVC holds the artifacts).
kubectl apply -k kuberay/overlays/minikube
echo "waiting for the pipeline RayJob (ingest -> tune -> distill -> promote) ..."
for _ in $(seq 180); do  # at most an hour
  [[ "$(kubectl get rayjob mbta-ray-pipeline -o jsonpath='{.status.jobStatus}')" =~ ^(SUCCEEDED|FAILED|STOPPED)$ ]] && break
  sleep 20
done
kubectl get rayjob mbta-ray-pipeline -o jsonpath='{.status.jobStatus}{"\n"}'
[[ "$(kubectl get rayjob mbta-ray-pipeline -o jsonpath='{.status.jobStatus}')" == SUCCEEDED ]]

# The service may have started before a model existed (503 on /healthz): its replicas follow the
# registry's production pointer (serve_config.yaml: version production) and load the promoted model
# within 30 s, no redeploy needed.
echo "waiting for the RayService ..."
kubectl wait rayservice/mbta-ray-serve --for=condition=Ready --timeout=15m

# 5. One prediction through a port-forward of the Serve service.
kubectl port-forward svc/mbta-ray-serve-serve-svc 8000:8000 >/dev/null 2>&1 &
PF=$!
trap 'kill ${PF}' EXIT
for _ in $(seq 60); do curl -sf 127.0.0.1:8000/healthz && break; sleep 5; done  # 200 once the model is loaded
echo
curl -s -X POST 127.0.0.1:8000/predict -H 'content-type: application/json' -d '{
  "route_id": "Blue", "direction_id": 0, "stop_id": "70059",
  "actual_arrival": "2024-02-07T12:59:53-05:00", "scheduled_arrival": "2024-02-07T13:04:00-05:00",
  "stops_ahead": [{"stop_id": "70051", "scheduled_arrival": "2024-02-07T13:11:00-05:00"}]}'
echo
