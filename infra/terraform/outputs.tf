# What deployments/environments/<env>.yaml reads (set these as the CI variables it names).
output "MLOPS_ECS_CLUSTER" {
  value = aws_ecs_cluster.this.arn
}
output "MLOPS_ECS_TASK_ROLE_ARN" {
  value = aws_iam_role.task.arn
}
output "MLOPS_ECS_EXECUTION_ROLE_ARN" {
  value = aws_iam_role.execution.arn
}
output "MLOPS_ECR_REPOSITORY" {
  value = aws_ecr_repository.this["flows"].repository_url
}
output "MLOPS_DVC_REMOTE_URL" {
  value = "s3://${module.bucket["dvc"].bucket}/dvc"
}
output "MLOPS_PREDICTION_LOG_URL" {
  value = "s3://${module.bucket["prediction-log"].bucket}/log"
}
output "MLOPS_MLFLOW_TRACKING_URI" {
  value = "http://mlflow.${aws_service_discovery_private_dns_namespace.mlops.name}:5000"
}
output "MLOPS_RESULTS_BUCKET" {
  value = module.bucket["results"].bucket
}
output "work_pool" {
  value = prefect_work_pool.ecs.name
}
