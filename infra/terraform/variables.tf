variable "environment" {
  description = "Environment name: staging or prod (one state, one set of resources each)."
  type        = string
  validation {
    condition     = contains(["staging", "prod"], var.environment)
    error_message = "environment must be staging or prod."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "vpc_id" {
  description = "The VPC flow runs and the MLflow server run in."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (no public IPs) for ECS tasks and the database."
  type        = list(string)
}

variable "allowed_cidr_blocks" {
  description = "Networks that may reach the MLflow server (the VPC's, typically)."
  type        = list(string)
}

variable "mlflow_image" {
  description = "MLflow server image (with psycopg2 and boto3), from ECR."
  type        = string
}

variable "db_instance_class" {
  description = "RDS instance class of MLflow's Postgres backend."
  type        = string
  default     = "db.t4g.small"
}

variable "db_multi_az" {
  description = "Run the database in two availability zones."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "CloudWatch log retention."
  type        = number
  default     = 365
}

variable "work_pool_concurrency" {
  description = "At most this many flow runs at once on the ECS work pool."
  type        = number
}

variable "prefect_api_url" {
  description = "Prefect API: https://api.prefect.cloud/api for Prefect Cloud, or a server's /api URL."
  type        = string
}

variable "prefect_account_id" {
  description = "Prefect Cloud account id (null for a self-hosted server)."
  type        = string
  default     = null
}

variable "prefect_workspace_id" {
  description = "Prefect Cloud workspace id (null for a self-hosted server)."
  type        = string
  default     = null
}
